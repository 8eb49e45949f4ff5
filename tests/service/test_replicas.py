"""Several replicas on one release: two real `reaseq serve` processes on one real redis-server,
under continuous traffic while a new release is published. Both switch within one poll interval
(within their own load time when the pointer is pushed), every response names its release, and
no response mixes one release's model with another's features."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from reaseq.core.keys import KeySchema
from reaseq.core.release import read_manifest
from reaseq.offline.publish import RedisPublisher
from tests.conftest import RedisServer
from tests.service.recompute import offline_scores
from tests.service.service_proc import ServiceProcess, scrape

NS = "replicas"
CLI = [str(Path(sys.executable).with_name("reaseq")), "serve"]
POLL_S = 1.0  # the poll interval of the polling replicas
SLOW_POLL_S = 60.0  # the pushed replicas': a switch within seconds can only be the push
SLACK_S = 1.5  # scheduling on a shared 2-core machine: two servers, the traffic, the publisher


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    body: dict


class Traffic:
    """One thread per replica sending the same Rank request back to back until stopped."""

    def __init__(self, replicas: list[ServiceProcess], body: dict) -> None:
        self.body, self.stopping = body, threading.Event()
        self.answers: list[list[Answer]] = [[] for _ in replicas]
        self.threads = [
            threading.Thread(target=self._send, args=(r.base_url, out), daemon=True)
            for r, out in zip(replicas, self.answers, strict=True)
        ]

    def _send(self, base_url: str, out: list[Answer]) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            while not self.stopping.is_set():
                sent = time.monotonic()
                response = http.post("/v1/rank", json=self.body)
                out.append(Answer(sent, time.monotonic(), response.status_code, response.json()))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


def answered(answers: list[Answer], release: str) -> bool:
    return any(a.body.get("release") == release for a in answers)


def push_subscribed(replica: ServiceProcess) -> bool:
    return scrape(replica, "reaseq_release_push_subscribed") == 1


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


def ready_on(replica: ServiceProcess, release: str) -> bool:
    try:
        response = httpx.get(f"{replica.base_url}/readyz", timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json().get("release") == release


@pytest.fixture(params=["poll", "push"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(mode: str, tmp_path: Path) -> Iterator[RedisServer]:
    """For push, a server that publishes keyspace notifications (its config, as an operator
    would set it); for polling, one as shipped."""
    extra = ("--notify-keyspace-events", "K$") if mode == "push" else ()
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", extra_args=extra)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replicas(mode: str, store: RedisServer, pipeline_run, tmp_path: Path):
    """Release A active, then two `reaseq serve` processes on it."""
    with redis.Redis.from_url(store.url) as client:
        RedisPublisher(client, KeySchema(NS)).publish(pipeline_run.release_dir)
    env = {
        "REASEQ_STORE": "redis",
        "REASEQ_REDIS_URL": store.url,
        "REASEQ_REDIS_NAMESPACE": NS,
        "REASEQ_RELEASE_PUSH": "auto" if mode == "push" else "off",
        "REASEQ_RELEASE_POLL_INTERVAL_S": str(SLOW_POLL_S if mode == "push" else POLL_S),
    }
    procs = [ServiceProcess(tmp_path, tmp_path / "logs", env=env, command=CLI) for _ in range(2)]
    try:
        for proc in procs:
            proc.start()
        first = read_manifest(pipeline_run.release_dir).release
        for proc in procs:
            proc.wait_alive()
            wait_until(lambda p=proc: ready_on(p, first), 60, "serving release A")
            if mode == "push":
                wait_until(lambda p=proc: push_subscribed(p), 10, "subscribed to the pointer")
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def test_two_replicas_switch_within_one_poll_interval_and_never_mix(
    mode: str,
    replicas: list[ServiceProcess],
    store: RedisServer,
    pipeline_run,
    second_release: Path,
    release_ids: tuple[str, list[str]],
) -> None:
    user, items = release_ids
    body = {"user_id": user, "candidate_item_ids": items, "recent_item_ids": items[:2]}
    dirs = {read_manifest(d).release: d for d in (pipeline_run.release_dir, second_release)}
    first, second = dirs
    triples = {
        r: (r, read_manifest(d).model_version, read_manifest(d).feature_version)
        for r, d in dirs.items()
    }
    expected = {r: offline_scores(d, user, items, items[:2]) for r, d in dirs.items()}
    assert not np.allclose(expected[first], expected[second])
    with redis.Redis.from_url(store.url) as client:
        publisher = RedisPublisher(client, KeySchema(NS))
        publisher.publish(second_release, activate=False)
        loads_before = [scrape(r, "reaseq_release_switch_seconds_sum") for r in replicas]
        with Traffic(replicas, body) as traffic:
            time.sleep(0.5)  # traffic on release A first
            publisher.activate(second)  # verify, then SET the pointer: the last step
            activated = time.monotonic()
            wait_until(
                lambda: all(answered(out, second) for out in traffic.answers),
                SLOW_POLL_S / 4,
                "both replicas answering from release B",
            )
            time.sleep(0.5)  # and on release B after the switch

    latencies = []
    for replica, answers, load_before in zip(replicas, traffic.answers, loads_before, strict=True):
        assert [a for a in answers if a.status != 200] == []
        for answer in answers:  # each names its release, and is that release's own scores
            release = answer.body["release"]
            served = (release, answer.body["model_version"], answer.body["feature_version"])
            assert served == triples[release], served
            np.testing.assert_allclose(answer.body["scores"], expected[release], atol=1e-6)
        first_new = min(a.received for a in answers if a.body["release"] == second)
        assert all(a.body["release"] == second for a in answers if a.sent > first_new)
        assert any(a.body["release"] == first for a in answers)
        load_s = scrape(replica, "reaseq_release_switch_seconds_sum") - load_before
        latencies.append((first_new - activated, load_s))
    print(f"{mode}: (seconds from activate to the first B answer, of them loading) {latencies}")
    for seconds, load_s in latencies:
        if mode == "poll":
            assert seconds <= POLL_S + load_s + SLACK_S, latencies
        else:
            assert seconds <= load_s + SLACK_S, latencies
