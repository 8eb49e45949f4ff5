"""`reaseq soak`: the short CI run of the real thing (redis-server, `reaseq serve`, a release
switch and a Redis kill under gRPC + HTTP load), and the analysis on records made up to sit on
each side of a window's edge."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reaseq.bench.soak import (
    Record,
    SoakConfig,
    SoakRun,
    analyse,
    parse_duration,
    renamed_copy,
)
from reaseq.core.release import read_manifest
from reaseq.offline.publish import EmbeddedPublisher

CI_DURATION_S = 40
CLEAR_OUTAGE_CODES = {"UNAVAILABLE", "HTTP 503 feature_store_unavailable"}


@pytest.mark.e2e
def test_short_soak_has_no_errors_outside_the_fault_windows(
    pipeline_run, second_release: Path, tmp_path: Path
) -> None:
    out = tmp_path / "soak"
    command = [sys.executable, "-m", "reaseq.cli", "soak", str(pipeline_run.release_dir)]
    command += ["--second", str(second_release), "--duration", f"{CI_DURATION_S}s"]
    command += ["--outage", "3s", "--concurrency", "4", "--out", str(out)]
    # 40 s is not a soak of memory: the RSS figures must exist, their limit is the 10-minute run's
    command += ["--max-rss-growth", "50"]
    # its own process group: whatever ends this test also ends the redis-server and the
    # service the soak started, even if the soak itself is killed before it can stop them
    soak = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        output = soak.communicate(timeout=120)[0][-6000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(soak.pid, signal.SIGKILL)
    assert soak.returncode == 0, output
    report = json.loads((out / "soak.json").read_text())
    release_a = read_manifest(pipeline_run.release_dir).release
    release_b = read_manifest(second_release).release
    assert (report["release_a"], report["release_b"]) == (release_a, release_b)

    assert report["errors_outside_windows"] == 0, report["outside_error_examples"]
    assert report["by_transport"]["grpc"] > 200 and report["by_transport"]["http"] > 200, output
    assert report["switch_seen_s"] > report["events_s"]["activate_start"], report["events_s"]
    phases = {p["phase"]: p for p in report["phases"]}
    assert set(phases["release A"]["releases"]) == {release_a}
    assert set(phases["after recovery"]["releases"]) == {release_b}
    assert phases["after recovery"]["requests"] > 50, phases["after recovery"]

    outage = next(w for w in report["windows"] if w["window"] == "redis outage")
    assert outage["errors"] > 0, "the Redis kill was not felt: the soak proved nothing"
    assert set(outage["error_codes"]) <= CLEAR_OUTAGE_CODES, outage["error_codes"]
    assert outage["first_ok_after_restart_s"] is not None, outage
    assert report["rss"]["growth_pct"] is not None and report["rss"]["samples"] >= 30
    for name in ("soak.md", "requests.csv", "server.csv", "logs/reaseq-serve.log"):
        assert (out / name).is_file(), name
    print(output[-3000:])  # the table and the headline, for `pytest -rP`


def test_durations_read_with_or_without_a_unit() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("40s") == parse_duration("40") == 40
    assert parse_duration("1.5h") == 5400
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError, match="duration"):
        parse_duration("ten minutes")


def test_a_soak_given_one_export_switches_to_a_renamed_copy_that_publishes(
    pipeline_run, tmp_path: Path
) -> None:
    copy = renamed_copy(pipeline_run.release_dir, tmp_path / "release-b")
    original = read_manifest(pipeline_run.release_dir)
    renamed = read_manifest(copy)
    assert renamed.release != original.release
    assert renamed.model_sha256 == original.model_sha256
    publisher = EmbeddedPublisher(tmp_path / "store")
    publisher.publish(pipeline_run.release_dir)
    assert publisher.publish(copy) == renamed.release  # seal and full verification pass
    assert publisher.active() == renamed.release


# --- the analysis, on made-up records ---------------------------------------------------------

A, B = "release-a", "release-b"


def _cfg(tmp_path: Path, **kwargs: float) -> SoakConfig:
    """A 60-s soak: warm-up 6 s, RSS windows of 10 s; a grace that puts no answer on an edge."""
    return SoakConfig(
        export_a=tmp_path, out=tmp_path, duration_s=60.0, switch_grace_s=2.03, **kwargs
    )


def _steady(start: float, end: float, release: str, step: float = 0.1) -> list[Record]:
    """OK answers of 10 ms every `step`, half a step past each tenth of a second."""
    n = round((end - start) / step)
    return [Record(start + 0.05 + i * step, 0.01, "grpc", "OK", "", release) for i in range(n)]


def _run(extra: list[Record], rss_end_mib: float = 100.0) -> SoakRun:
    records = _steady(0, 25, A) + _steady(25, 60, B) + extra
    rss = [(float(t), int((100 + (rss_end_mib - 100) * t / 60) * 2**20)) for t in range(61)]
    cpu = [(float(t), 0.5 * t) for t in range(61)]  # the server busy half the time
    events = {"activate_start": 20.0, "activate_end": 21.0, "redis_kill": 40.0}
    events |= {"redis_restart": 43.0, "redis_ready": 43.5}
    return SoakRun(records=records, events=events, rss=rss, cpu=cpu, duration_s=60.0)


def test_errors_count_where_they_ended_and_only_outside_windows_fail(tmp_path: Path) -> None:
    outage = [Record(39.9, 0.2, "http", "HTTP 503", "feature_store_unavailable")]  # ends inside
    before_kill = [Record(39.0, 0.1, "grpc", "UNAVAILABLE", "store unreachable")]  # ends outside
    report = analyse(_cfg(tmp_path), _run(outage), A, B)
    assert report["passed"], report["failures"]
    assert report["switch_seen_s"] == pytest.approx(25.06)  # the first B answer's end
    windows = {w["window"]: w for w in report["windows"]}
    assert (windows["release switch"]["start_s"], windows["release switch"]["end_s"]) == (
        20.0,
        27.09,
    )
    assert windows["redis outage"]["end_s"] == 48.5  # back at 43.5 + 5 s of grace
    assert windows["redis outage"]["error_codes"] == {"HTTP 503 feature_store_unavailable": 1}
    assert windows["redis outage"]["max_failed_latency_ms"] == 200.0

    failed = analyse(_cfg(tmp_path), _run(outage + before_kill), A, B)
    assert not failed["passed"]
    assert failed["errors_outside_windows"] == 1
    assert failed["outside_error_codes"] == {"UNAVAILABLE": 1}


def test_phases_name_the_release_they_served(tmp_path: Path) -> None:
    report = analyse(_cfg(tmp_path), _run([]), A, B)
    phases = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == [
        "warm-up",
        "release A",
        "release switch",
        "release B",
        "redis outage",
        "after recovery",
    ]
    assert phases["release A"]["releases"] == {A: 140}  # ended 6-20 s, 10 per second
    assert phases["release switch"]["releases"] == {A: 50, B: 21}  # 20-27.09 s
    assert phases["release B"]["releases"] == {B: 129}  # 27.09-40 s
    assert phases["after recovery"]["releases"] == {B: 115}  # 48.5-60 s
    assert phases["release A"]["server_cpu_pct"] == 50.0
    assert phases["release A"]["server_cpu_ms_per_request"] == 50.0  # 7 s of CPU, 140 answers


def test_an_unclear_error_in_a_window_a_missing_switch_and_rss_growth_fail(
    tmp_path: Path,
) -> None:
    stuck = [Record(41.0, 10.0, "grpc", "DEADLINE_EXCEEDED", "")]  # ends at 51 s: outside too
    timeout = [Record(41.0, 2.0, "http", "TIMEOUT", "")]  # ends inside, but is not a clear 503
    report = analyse(_cfg(tmp_path), _run(stuck + timeout, rss_end_mib=110.0), A, B)
    assert report["errors_outside_windows"] == 1
    assert report["windows"][1]["unclear_errors"] == 1
    assert report["rss"]["growth_pct"] == pytest.approx(7.29, abs=0.01)  # 101.75 -> 109.17 MiB
    assert report["rss"]["last_third_mib_per_min"] == pytest.approx(10.0, abs=0.01)
    reasons = " | ".join(report["failures"])
    assert "1 errors outside" in reasons and "not UNAVAILABLE" in reasons and "RSS grew" in reasons

    never_b = analyse(_cfg(tmp_path), _run([]), A, "release-c")
    assert any("never served" in f for f in never_b["failures"])
    loose = analyse(_cfg(tmp_path, max_rss_growth_pct=10.0), _run([], 110.0), A, B)
    assert loose["passed"], loose["failures"]


def test_server_usage_reads_the_same_from_proc_as_from_psutil(monkeypatch) -> None:
    """Where psutil is not installed (it comes with locust, a dev extra) /proc answers."""
    from reaseq.bench.soak import read_usage

    rss, cpu = read_usage(os.getpid())
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` now raises ImportError
    proc_rss, proc_cpu = read_usage(os.getpid())
    assert proc_rss == pytest.approx(rss, rel=0.1)
    assert proc_cpu == pytest.approx(cpu, abs=0.5) and proc_cpu > 0
    assert read_usage(2**22 + 1) is None  # above pid_max's default: no such process


def test_soak_refuses_a_bad_duration_or_a_missing_export_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from reaseq.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["soak", str(tmp_path), "--duration", "ten minutes"])
    assert bad.exit_code == 2 and "a duration is a number" in bad.output, bad.output
    missing = runner.invoke(app, ["soak", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "error:" in missing.output, missing.output
    assert not (tmp_path / "o" / "redis").exists()  # refused before any process started
