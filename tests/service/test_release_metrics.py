"""Two gauges as a real server process exports them: `reaseq_ready` says what /readyz says
through a Redis outage, and the served release's age (its manifest's created_at) is the same
after the service restarts, where the time of the last switch is not."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from reaseq.core.keys import KeySchema
from reaseq.core.release import ACTIVE_FILE, read_manifest
from reaseq.offline.publish import RedisPublisher
from reaseq.service.metrics import created_timestamp
from tests.conftest import RedisServer
from tests.service.service_proc import ServiceProcess, scrape


def ready_and_readyz(proc: ServiceProcess) -> tuple[float, int]:
    """Scraped first, so a store that fails in between shows as (1, 503), never (0, 200)."""
    return scrape(proc, "reaseq_ready"), httpx.get(f"{proc.base_url}/readyz").status_code


def wait_for_state(proc: ServiceProcess, state: tuple[float, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := ready_and_readyz(proc)) != state:
        assert time.monotonic() < deadline, f"{seen} instead of {state}"
        time.sleep(0.1)


def test_ready_gauge_goes_to_0_with_redis_and_back_to_1(pipeline_run, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    with redis.Redis.from_url(server.url) as client:
        RedisPublisher(client, KeySchema("ready")).publish(pipeline_run.release_dir)
    env = {"REASEQ_STORE": "redis", "REASEQ_REDIS_URL": server.url}
    env |= {"REASEQ_REDIS_NAMESPACE": "ready", "REASEQ_RELEASE_POLL_INTERVAL_S": "0.5"}
    proc = ServiceProcess(tmp_path, tmp_path / "logs", env=env).start()
    try:
        proc.wait_alive()
        wait_for_state(proc, (1.0, 200), 30)
        server.stop()
        assert ready_and_readyz(proc) == (0.0, 503)  # at once: checked at each scrape
        server.start()  # empty: the loaded release keeps serving, its store answers again
        wait_for_state(proc, (1.0, 200), 10)
    finally:
        proc.stop()
        server.stop()


def test_release_age_is_the_same_after_a_restart(releases_dir: Path, tmp_path: Path) -> None:
    release = (releases_dir / ACTIVE_FILE).read_text().strip()
    created = created_timestamp(read_manifest(releases_dir / release).created_at)
    seen = []
    for run in range(2):
        proc = ServiceProcess(releases_dir, tmp_path / f"logs-{run}").start()
        try:
            proc.wait_alive()
            seen.append(
                (
                    scrape(proc, "reaseq_active_release_created_timestamp_seconds"),
                    scrape(proc, "reaseq_release_last_switch_timestamp_seconds"),
                )
            )
        finally:
            proc.stop()
    (created_1, switched_1), (created_2, switched_2) = seen
    assert created_1 == created_2 == created
    assert switched_2 > switched_1  # what the age was before: it restarted with the process
