"""`reaseq bench-follow` against a real server process on the embedded store: every move of the
pointer is followed and timed, read before served (the numbers are not asserted beyond that),
and the pointer ends where it began."""

import json
from pathlib import Path

from typer.testing import CliRunner

from reaseq.cli import app
from reaseq.core.release import ACTIVE_FILE
from reaseq.offline.publish import EmbeddedPublisher
from tests.service.service_proc import ServiceProcess


def test_bench_follow_times_every_switch(
    releases_dir: Path, second_release: Path, tmp_path: Path
) -> None:
    publisher = EmbeddedPublisher(releases_dir)
    first = publisher.active()
    publisher.publish(second_release)
    publisher.activate(first)  # both in the history: the second is the rollback target
    env = {"REASEQ_RELEASE_POLL_INTERVAL_S": "0.2"}
    proc = ServiceProcess(releases_dir, tmp_path / "logs", env=env).start()
    try:
        proc.wait_alive()
        args = ["bench-follow", "--target", proc.base_url, "--switches", "2"]
        args += ["--pause-max", "0.3", "--store", "embedded", "--releases-dir", str(releases_dir)]
        result = CliRunner().invoke(app, args)
    finally:
        proc.stop()
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["releases"] == [first, "second-release"] and stats["missed"] == 0
    assert 0 < stats["pointer_seen"]["max_s"] <= stats["served"]["max_s"] < 30
    assert (releases_dir / ACTIVE_FILE).read_text().strip() == first
