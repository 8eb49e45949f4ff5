"""`kill -9` of the publisher at random points never leaves the active pointer naming an
incomplete release, and a rerun completes (real processes, real Redis and files).

The publisher prints each step (`--verbose`) and pauses after it (`--pause-ms`); the test kills
it right after a randomly chosen step, inside that pause, so the kills land in the write, verify
and switch phases at known points rather than only during process start-up."""

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
    base = [sys.executable, "-m", "reaseq.cli", "publish", str(second_release)]
    base += ["--store", store, "--verbose", "--batch-size", "40"]
    cmd = [*base, "--pause-ms", "500"]  # time to kill it right after each step

    def forget_second() -> None:
        publisher.activate(first)
        if store == "redis":
            redis_client.zrem(keys.releases, second)
            publisher.delete_release_keys(second)
        else:
            shutil.rmtree(tmp_path / "releases" / second, ignore_errors=True)

    all_steps = kill_after_step(base, env, step=10_000)  # a full run: learn its steps
    assert all_steps[-1] == f"publish: activated {second}"
    completes_at = all_steps.index("publish: complete") + 1  # step number that marks it complete
    forget_second()

    rng = random.Random(7)
    steps = sorted(rng.sample(range(1, len(all_steps)), k=min(6, len(all_steps) - 1)))
    mid_write = 0
    for step in steps:
        seen = kill_after_step(cmd, env, step)
        active = publisher.active()
        complete = {m.release for m in publisher.complete()}
        assert active in complete, f"after {seen[-1]!r} the pointer names {active}"
        if store == "embedded":
            folder = tmp_path / "releases" / active
            verify_release_files(folder, read_manifest(folder))
        if step < completes_at:  # killed before the completion mark: never complete or active
            assert second not in complete and active == first
            mid_write += 1
        forget_second()
    assert mid_write >= 3, f"kills after steps {steps}: too few before completion"

    kill_after_step(cmd, env, step=3)  # leave leftovers, then a rerun completes
    subprocess.run(base, env=env, check=True, capture_output=True)
    assert publisher.active() == second
    assert {first, second} <= {m.release for m in publisher.complete()}
    if store == "embedded":
        assert not list((tmp_path / "releases").glob(".tmp-*"))
        verify_release_files(tmp_path / "releases" / second, read_manifest(second_release))
