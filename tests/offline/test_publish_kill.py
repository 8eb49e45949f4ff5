"""`kill -9` of the publisher at random points never leaves the active pointer naming an
incomplete release, and a rerun completes (real processes, real Redis and files)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from reaseq.core.keys import KeySchema
from reaseq.core.release import read_manifest, verify_release_files
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher


def publish_cmd(release_dir, store: str, env: dict) -> list[str]:
    return [sys.executable, "-m", "reaseq.cli", "publish", str(release_dir), "--store", store]


def run_and_kill(cmd: list[str], env: dict, after_s: float) -> bool:
    """Start the publisher, SIGKILL it after `after_s`; True if it had already finished."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after_s)
    finished = proc.poll() is not None
    proc.kill()
    proc.wait()
    return finished


@pytest.mark.parametrize("store", ["redis", "embedded"])
def test_kill_9_at_random_points(
    store, redis_client, redis_server, pipeline_run, second_release, tmp_path
) -> None:
    env = os.environ | {
        "REASEQ_REDIS_URL": redis_server.url,
        "REASEQ_REDIS_NAMESPACE": "kill",
        "REASEQ_RELEASES_DIR": str(tmp_path / "releases"),
    }
    if store == "redis":
        publisher = RedisPublisher(redis_client, KeySchema("kill"))
    else:
        publisher = EmbeddedPublisher(tmp_path / "releases")
    first = publisher.publish(pipeline_run.release_dir)
    second = read_manifest(second_release).release
    cmd = publish_cmd(second_release, store, env)

    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    full = time.perf_counter() - started
    publisher.activate(first)  # back to the start state; the second release stays complete...
    if store == "redis":  # ...so remove it, to make every kill hit a fresh publish
        redis_client.zrem(KeySchema("kill").releases, second)
        publisher.delete_release_keys(second)
    else:
        import shutil

        shutil.rmtree(tmp_path / "releases" / second)

    rng = random.Random(7)
    for _ in range(6):
        run_and_kill(cmd, env, rng.uniform(0.3 * full, full))
        active = publisher.active()
        assert active in {first, second}
        complete = {m.release for m in publisher.complete()}
        assert active in complete  # the pointer never names an incomplete release
        if store == "embedded":
            folder = tmp_path / "releases" / active
            verify_release_files(folder, read_manifest(folder))
        if active == second:  # that run got through: start over for the next kill
            publisher.activate(first)
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # a rerun completes
    assert publisher.active() == second
    assert {first, second} <= {m.release for m in publisher.complete()}
    if store == "embedded":
        assert not list((tmp_path / "releases").glob(".tmp-*"))
