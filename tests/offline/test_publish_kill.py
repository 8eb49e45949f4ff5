"""`kill -9` of the publisher at random points never leaves the active pointer naming an
incomplete release, and a rerun completes (real processes, real Redis and files).

The publisher prints each step (`--verbose`); a kill lands right after a randomly chosen step,
so the kills hit the write, verify and switch phases rather than only process start-up."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

from reaseq.core.keys import KeySchema
from reaseq.core.release import read_manifest, verify_release_files
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher


def kill_after_step(cmd: list[str], env: dict, step: int) -> list[str]:
    """Run the publisher and SIGKILL it as soon as it has printed `step` step lines."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    seen: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("publish:"):
            seen.append(line.strip())
            if len(seen) >= step:
                proc.kill()
                break
    proc.wait()
    return seen


@pytest.mark.parametrize("store", ["redis", "embedded"])
def test_kill_9_at_random_points(
    store, redis_client, redis_server, pipeline_run, second_release, tmp_path
) -> None:
    env = os.environ | {
        "REASEQ_REDIS_URL": redis_server.url,
        "REASEQ_REDIS_NAMESPACE": "kill",
        "REASEQ_RELEASES_DIR": str(tmp_path / "releases"),
    }
    keys = KeySchema("kill")
    if store == "redis":
        publisher = RedisPublisher(redis_client, keys)
    else:
        publisher = EmbeddedPublisher(tmp_path / "releases")
    first = publisher.publish(pipeline_run.release_dir)
    second = read_manifest(second_release).release
    cmd = [
        sys.executable,
        "-m",
        "reaseq.cli",
        "publish",
        str(second_release),
        "--store",
        store,
        "--verbose",
        "--batch-size",
        "40",
    ]

    def forget_second() -> None:
        publisher.activate(first)
        if store == "redis":
            redis_client.zrem(keys.releases, second)
            publisher.delete_release_keys(second)
        else:
            shutil.rmtree(tmp_path / "releases" / second, ignore_errors=True)

    all_steps = kill_after_step(cmd, env, step=10_000)  # a full run: learn its steps
    assert all_steps[-1] == f"publish: activated {second}"
    forget_second()

    rng = random.Random(7)
    mid_write = 0
    for step in sorted(rng.sample(range(1, len(all_steps)), k=min(8, len(all_steps) - 1))):
        seen = kill_after_step(cmd, env, step)
        active = publisher.active()
        complete = {m.release for m in publisher.complete()}
        assert active in complete, f"after {seen[-1]!r} the pointer names {active}"
        if store == "embedded":
            folder = tmp_path / "releases" / active
            verify_release_files(folder, read_manifest(folder))
        if second not in complete:
            assert active == first
            mid_write += 1
        forget_second()
    assert mid_write >= 3, "too few kills landed before the release was complete"

    kill_after_step(cmd, env, step=3)  # leave leftovers, then a rerun completes
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert publisher.active() == second
    assert {first, second} <= {m.release for m in publisher.complete()}
    if store == "embedded":
        assert not list((tmp_path / "releases").glob(".tmp-*"))
        verify_release_files(tmp_path / "releases" / second, read_manifest(second_release))
