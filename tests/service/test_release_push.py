"""Pointer push over real redis-servers: a publish is seen at once through keyspace
notifications, polling still switches where the server sends none, the service changes the
server's config only when told to, and the subscription comes back after a Redis restart without
a busy loop or a leaked connection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from reaseq.core.keys import KeySchema
from reaseq.offline.publish import RedisPublisher
from reaseq.service import releases
from reaseq.service.ranking import Ranker
from reaseq.service.releases import PUSH_BACKOFF_MAX_S
from reaseq.service.settings import ServiceSettings
from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio

NS = "push"
SLOW_POLL_S = 60.0  # so slow that only a push can explain a switch within seconds
NOTIFY = ("--notify-keyspace-events", "K$")


@pytest.fixture
def notifying_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that publishes keyspace notifications of string commands (K$)."""
    server = RedisServer(tmp_path, extra_args=NOTIFY)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def quiet_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server as shipped: notify-keyspace-events is empty (no notifications)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def publisher(server: RedisServer) -> RedisPublisher:
    return RedisPublisher(redis.Redis.from_url(server.url), KeySchema(NS))


def settings(server: RedisServer, **extra: object) -> ServiceSettings:
    values: dict = {
        "store": "redis",
        "redis_url": server.url,
        "redis_namespace": NS,
        "release_poll_interval_s": SLOW_POLL_S,
    }
    return ServiceSettings(_env_file=None, **(values | extra))


async def wait_for(condition, timeout_s: float, what: str) -> float:
    """Seconds until `condition()` holds; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def serving(ranker: Ranker) -> str | None:
    versions = ranker.active_versions()
    return versions[0] if versions else None


def subscribed() -> bool:
    return REGISTRY.get_sample_value("reaseq_release_push_subscribed") == 1


async def test_a_publish_is_pushed_at_once(
    notifying_redis: RedisServer, pipeline_run, second_release: Path
) -> None:
    pub = publisher(notifying_redis)
    first = pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    ranker = await Ranker.open(settings(notifying_redis))
    try:
        await wait_for(subscribed, 10, "subscribed to the pointer")
        await asyncio.to_thread(pub.activate, second)
        seconds = await wait_for(lambda: serving(ranker) == second, 20, "switched by push")
        assert seconds < SLOW_POLL_S / 4
        await asyncio.to_thread(pub.activate, first)  # and back: every move is pushed
        await wait_for(lambda: serving(ranker) == first, 20, "switched back by push")
    finally:
        await ranker.close()
    assert not subscribed()


async def test_without_notifications_it_says_so_once_and_polling_switches(
    quiet_redis: RedisServer, pipeline_run, second_release: Path, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="reaseq.service.releases")
    pub = publisher(quiet_redis)
    pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    ranker = await Ranker.open(settings(quiet_redis, release_poll_interval_s=0.5))
    try:
        await wait_for(lambda: "publishes no keyspace" in caplog.text, 10, "the warning")
        await asyncio.to_thread(pub.activate, second)
        await wait_for(lambda: serving(ranker) == second, 20, "switched by polling")
        assert not subscribed()
    finally:
        await ranker.close()
    warnings = [r.getMessage() for r in caplog.records if "keyspace" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "REASEQ_RELEASE_PUSH_CONFIGURE_SERVER" in warnings[0]
    # the server's config is the operator's: untouched
    config = redis.Redis.from_url(quiet_redis.url).config_get("notify-keyspace-events")
    assert config == {"notify-keyspace-events": ""}


async def test_allowed_to_configure_the_server_it_turns_notifications_on(
    quiet_redis: RedisServer, pipeline_run, second_release: Path
) -> None:
    client = redis.Redis.from_url(quiet_redis.url)
    client.config_set("notify-keyspace-events", "Ex")  # someone else's flags: kept
    pub = publisher(quiet_redis)
    pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    ranker = await Ranker.open(settings(quiet_redis, release_push_configure_server=True))
    try:
        await wait_for(subscribed, 10, "subscribed to the pointer")
        flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set(flags) == set("K$Ex"), flags
        await asyncio.to_thread(pub.activate, second)
        await wait_for(lambda: serving(ranker) == second, 20, "switched by push")
    finally:
        await ranker.close()


async def test_push_off_never_subscribes(
    notifying_redis: RedisServer, pipeline_run, second_release: Path
) -> None:
    pub = publisher(notifying_redis)
    pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    ranker = await Ranker.open(settings(notifying_redis, release_push="off"))
    try:
        await asyncio.to_thread(pub.activate, second)
        await asyncio.sleep(2.0)  # a push would have switched by now (see the test above)
        assert serving(ranker) != second and not subscribed()
        assert connections(notifying_redis, "pubsub") == 0
    finally:
        await ranker.close()


def connections(server: RedisServer, kind: str | None = None) -> int:
    """Connections to the server (of `kind`: "pubsub"), the one asking not counted."""
    with redis.Redis.from_url(server.url) as probe:
        return len(probe.client_list(_type=kind)) - (kind is None)


async def test_push_comes_back_after_a_redis_restart_without_a_busy_loop_or_a_leak(
    notifying_redis: RedisServer, pipeline_run, second_release: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="reaseq.service.releases")
    with redis.Redis.from_url(notifying_redis.url) as client:
        first = RedisPublisher(client, KeySchema(NS)).publish(pipeline_run.release_dir)
    ranker = await Ranker.open(settings(notifying_redis))
    try:
        await wait_for(subscribed, 10, "subscribed to the pointer")
        assert connections(notifying_redis, "pubsub") == 1
        notifying_redis.stop()
        outage_s = 3.0
        await asyncio.sleep(outage_s)
        attempts = caplog.text.count("release push: next attempt")
        assert 2 <= attempts <= 8, f"{attempts} resubscribe attempts in a {outage_s} s outage"
        assert not subscribed() and serving(ranker) == first  # the loaded release keeps serving

        notifying_redis.start()  # empty, with the same notification config: publish again
        with redis.Redis.from_url(notifying_redis.url) as client:
            pub = RedisPublisher(client, KeySchema(NS))
            pub.publish(pipeline_run.release_dir)
            second = pub.publish(second_release, activate=False)
            await wait_for(subscribed, PUSH_BACKOFF_MAX_S + 5, "subscribed again")
            await asyncio.to_thread(pub.activate, second)
        seconds = await wait_for(lambda: serving(ranker) == second, 20, "switched by push")
        assert seconds < SLOW_POLL_S / 4
        assert connections(notifying_redis, "pubsub") == 1  # not one per attempt
        assert "subscribed again" in caplog.text
    finally:
        await ranker.close()
    assert connections(notifying_redis, "pubsub") == 0
    await wait_for(lambda: connections(notifying_redis) == 0, 5, "every connection closed")


async def test_a_new_subscription_checks_the_pointer_it_was_not_told_about(
    quiet_redis: RedisServer, pipeline_run, second_release: Path, monkeypatch
) -> None:
    """The pointer moves while nothing is pushed; once the subscription starts, the service
    looks at the pointer at once instead of waiting for a notification that never comes."""
    monkeypatch.setattr(releases, "PUSH_RECHECK_S", 0.2)
    pub = publisher(quiet_redis)
    pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    ranker = await Ranker.open(settings(quiet_redis))
    try:
        await asyncio.to_thread(pub.activate, second)  # no notifications yet: nothing pushed
        await asyncio.sleep(1.0)
        assert serving(ranker) != second
        pub.client.config_set("notify-keyspace-events", "K$")  # now the server publishes
        await wait_for(lambda: serving(ranker) == second, 20, "switched on subscribing")
    finally:
        await ranker.close()


async def test_a_stalled_server_drops_the_subscription_and_it_comes_back(
    notifying_redis: RedisServer, pipeline_run, second_release: Path, monkeypatch, caplog
) -> None:
    """A server that stops answering (DEBUG SLEEP) raises no error on a subscribed connection:
    the unanswered PING does, and the service subscribes again once the server answers."""
    caplog.set_level(logging.INFO, logger="reaseq.service.releases")
    monkeypatch.setattr(releases, "PUSH_PING_S", 0.5)
    pub = publisher(notifying_redis)
    pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    ranker = await Ranker.open(settings(notifying_redis))
    try:
        await wait_for(subscribed, 10, "subscribed to the pointer")
        await asyncio.to_thread(pub.client.execute_command, "DEBUG", "SLEEP", "2.5")
        assert "answered nothing" in caplog.text
        await wait_for(lambda: "subscribed again" in caplog.text, 10, "subscribed again")
        await asyncio.to_thread(pub.activate, second)
        await wait_for(lambda: serving(ranker) == second, 20, "switched by push")
    finally:
        await ranker.close()
