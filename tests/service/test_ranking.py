"""The ranking core over real stores: scores match an offline recomputation from the release's
files, unknown ids are flagged, Redis outages fail fast and recover, releases switch live (under
load, never mixed) and bad releases are refused while the old one keeps serving."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pydantic
import pytest

from reaseq.core.keys import KeySchema
from reaseq.core.release import ACTIVE_FILE, ReleaseCheckError, read_manifest, write_atomic
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher
from reaseq.service import metrics
from reaseq.service.errors import (
    DeadlineExceeded,
    FeatureStoreUnavailable,
    InvalidRequest,
    NotReady,
)
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from tests.service.recompute import offline_scores
from tests.service.switching import (
    no_old_release_after_the_new,
    rank_across_switch,
    rank_once_the_store_answers,
)

pytestmark = pytest.mark.anyio


async def test_scores_match_offline_recomputation(
    ranker: Ranker, releases_dir, release_ids
) -> None:
    user, items = release_ids
    query = RankQuery(user, [*items[::-1], "no-such-item"], recent_item_ids=[items[0], "nope"])
    result = await ranker.rank(query)
    release_dir = releases_dir / result.release
    expected = offline_scores(release_dir, user, query.candidate_item_ids, query.recent_item_ids)
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    assert result.unknown_item_indices == [len(items)]
    assert result.unknown_recent_indices == [1]
    assert not result.unknown_user
    assert set(result.timings) == {"features", "model", "total"}


async def test_unknown_user_is_flagged_and_scored_without_history(
    ranker, releases_dir, release_ids
):
    _, items = release_ids
    result = await ranker.rank(RankQuery("someone-new", items[:3]))
    assert result.unknown_user
    expected = offline_scores(releases_dir / result.release, "someone-new", items[:3])
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)


async def test_bad_input_is_rejected_before_any_read(ranker) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        await ranker.rank(RankQuery("u", []))
    with pytest.raises(InvalidRequest, match="limit"):
        await ranker.rank(RankQuery("u", ["i"] * (ranker.limits.max_candidates + 1)))


@pytest.fixture
async def redis_ranker(redis_client, redis_server, pipeline_run):
    RedisPublisher(redis_client, KeySchema("svc")).publish(pipeline_run.release_dir)
    settings = ServiceSettings(
        store="redis",
        redis_url=redis_server.url,
        redis_namespace="svc",
        release_poll_interval_s=0.2,
        redis_timeout_s=0.25,
    )
    opened = await Ranker.open(settings)
    assert opened.is_ready()
    yield opened
    await opened.close()


async def test_redis_and_embedded_stores_give_identical_scores(
    redis_ranker: Ranker, ranker: Ranker, release_ids
) -> None:
    user, items = release_ids
    query = RankQuery(user, items, recent_item_ids=items[:2])
    from_redis, embedded = await redis_ranker.rank(query), await ranker.rank(query)
    assert from_redis.release == embedded.release
    assert from_redis.scores == embedded.scores


async def test_redis_outage_fails_fast_and_recovers_without_restart(
    redis_ranker: Ranker, redis_server, release_ids, pipeline_run
) -> None:
    user, items = release_ids
    query = RankQuery(user, items)
    before = await redis_ranker.rank(query)
    redis_server.stop()
    try:
        started = time.perf_counter()
        with pytest.raises(FeatureStoreUnavailable, match="feature store") as caught:
            await redis_ranker.rank(query)
        assert time.perf_counter() - started < 2.0
        assert "127.0.0.1" not in caught.value.message  # no addresses to callers
        assert "Error" not in caught.value.message  # nor exception class names
        with pytest.raises(FeatureStoreUnavailable):
            await redis_ranker.check_ready()
    finally:
        redis_server.start()  # a fresh, empty server on the same port: republish
    import redis

    RedisPublisher(redis.Redis.from_url(redis_server.url), KeySchema("svc")).publish(
        pipeline_run.release_dir
    )
    after = await rank_once_the_store_answers(redis_ranker, query, timeout_s=5)
    assert after.scores == before.scores


@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_live_switch_under_load_never_mixes_releases(
    store,
    releases_dir: Path,
    pipeline_run,
    second_release: Path,
    release_ids,
    redis_client,
    redis_server,
) -> None:
    if store == "redis":
        publisher = RedisPublisher(redis_client, KeySchema("switch"))
        publisher.publish(pipeline_run.release_dir)
    else:
        publisher = EmbeddedPublisher(releases_dir)
    settings = ServiceSettings(
        store=store,
        releases_dir=releases_dir,
        redis_url=redis_server.url,
        redis_namespace="switch",
        release_poll_interval_s=0.05,
    )
    ranker = await Ranker.open(settings)
    user, items = release_ids
    first = ranker.active_versions()[0]
    query = RankQuery(user, items, recent_item_ids=items[:2])
    try:
        results, spans, errors = await rank_across_switch(
            ranker, query, lambda: publisher.publish(second_release)
        )
    finally:
        await ranker.close()
    assert errors == []
    seen = {r.release for r in results}
    assert seen == {first, "second-release"}, seen
    dirs = {first: pipeline_run.release_dir, "second-release": second_release}
    expected = {rel: offline_scores(dirs[rel], user, items, items[:2]) for rel in seen}
    for result in results:
        np.testing.assert_allclose(result.scores, expected[result.release], atol=1e-6)
        manifest = read_manifest(dirs[result.release])
        assert (result.model_version, result.feature_version) == (
            manifest.model_version,
            manifest.feature_version,
        )
    assert not np.allclose(expected[first], expected["second-release"])
    assert no_old_release_after_the_new(spans)


async def test_corrupt_release_is_refused_and_old_one_keeps_serving(
    ranker: Ranker, releases_dir: Path, second_release: Path, release_ids
) -> None:
    user, items = release_ids
    first = ranker.active_versions()[0]
    bad = releases_dir / "corrupt-release"
    shutil.copytree(second_release, bad)
    manifest = read_manifest(bad)
    (bad / "manifest.json").write_text(
        manifest.model_copy(
            update={"release": "corrupt-release", "vector_dim": manifest.vector_dim + 1}
        ).model_dump_json()
    )
    refused_before = metrics.RELEASES_REFUSED._value.get()
    write_atomic(releases_dir / ACTIVE_FILE, b"corrupt-release")
    assert await ranker.refresh() is False
    assert metrics.RELEASES_REFUSED._value.get() == refused_before + 1
    result = await ranker.rank(RankQuery(user, items))
    assert result.release == first
    # once a good release is named again, the service follows it
    EmbeddedPublisher(releases_dir).publish(second_release)
    assert await ranker.refresh() is True
    assert (await ranker.rank(RankQuery(user, items))).release == "second-release"


async def test_gc_never_removes_the_release_a_service_holds(
    service_settings, releases_dir: Path, second_release: Path
) -> None:
    ranker = await Ranker.open(service_settings, follow=False)  # switches only when told
    try:
        first = ranker.active_versions()[0]
        publisher = EmbeddedPublisher(releases_dir)
        publisher.publish(second_release, activate=True, keep=1)  # not switched yet
        assert (releases_dir / first).is_dir(), "GC removed the release a running service holds"
        assert await ranker.refresh() is True
        await asyncio.gather(*ranker._retiring)  # the old release has drained
        await ranker.source.mark_in_use(ranker.instance, ranker._held())
        assert publisher.gc(keep=1) == [first]  # now nobody holds it
    finally:
        await ranker.close()


async def test_request_deadline_cuts_a_slow_store_read(
    redis_client, redis_server, pipeline_run, release_ids
) -> None:
    """A Redis that stalls (DEBUG SLEEP blocks the real server) costs at most the deadline."""
    RedisPublisher(redis_client, KeySchema("slow")).publish(pipeline_run.release_dir)
    settings = ServiceSettings(
        store="redis", redis_url=redis_server.url, redis_namespace="slow", redis_timeout_s=5.0
    )
    user, items = release_ids
    ranker = await Ranker.open(settings, follow=False)
    try:
        await ranker.rank(RankQuery(user, items))  # connection warm
        sleeper = asyncio.create_task(
            asyncio.to_thread(redis_client.execute_command, "DEBUG", "SLEEP", "1")
        )
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="reading features"):
            await ranker.rank(RankQuery(user, items, deadline_ms=100))
        assert time.perf_counter() - started < 0.5
        await sleeper
        # the abandoned read's connection is not reused half-read: the next request is served
        assert len((await ranker.rank(RankQuery(user, items))).scores) == len(items)
    finally:
        await ranker.close()


async def test_redis_release_corrupted_in_the_store_is_refused(
    redis_ranker: Ranker, redis_client, second_release: Path, release_ids
) -> None:
    """A release whose model bytes in Redis no longer match its manifest hash is never served."""
    keys = KeySchema("svc")
    first = redis_ranker.active_versions()[0]
    publisher = RedisPublisher(redis_client, keys)
    publisher.publish(second_release, activate=False)
    model = bytearray(redis_client.get(keys.model("second-release")))
    model[len(model) // 2] ^= 0xFF
    redis_client.set(keys.model("second-release"), bytes(model))
    with pytest.raises(ReleaseCheckError, match="model"):
        publisher.activate("second-release")  # verified before the pointer moves
    redis_client.set(keys.active, "second-release")  # moved by hand: the service still refuses
    assert await redis_ranker.refresh() is False
    user, items = release_ids
    assert (await redis_ranker.rank(RankQuery(user, items))).release == first
    publisher.activate(first)  # rollback: the pointer names the serving release again
    assert await redis_ranker.refresh() is False
    assert redis_ranker.active_versions()[0] == first


async def test_service_started_while_redis_is_down_becomes_ready_without_restart(
    tmp_path, pipeline_run, release_ids
) -> None:
    from tests.conftest import RedisServer

    server = RedisServer(tmp_path)  # not started yet
    settings = ServiceSettings(
        store="redis", redis_url=server.url, redis_namespace="late", release_poll_interval_s=0.1
    )
    ranker = await Ranker.open(settings)
    try:
        assert not ranker.is_ready()
        with pytest.raises(NotReady):
            await ranker.rank(RankQuery(*release_ids))
        server.start()
        import redis

        RedisPublisher(redis.Redis.from_url(server.url), KeySchema("late")).publish(
            pipeline_run.release_dir
        )
        for _ in range(50):
            if ranker.is_ready():
                break
            await asyncio.sleep(0.1)
        assert ranker.is_ready()
        assert len((await ranker.rank(RankQuery(*release_ids))).scores) == len(release_ids[1])
    finally:
        await ranker.close()
        server.stop()


async def test_redis_auth_is_configurable(tmp_path, pipeline_run, release_ids) -> None:
    from tests.conftest import RedisServer

    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        import redis

        RedisPublisher(
            redis.Redis.from_url(server.url, password="s3cret"), KeySchema("auth")
        ).publish(pipeline_run.release_dir)
        good = ServiceSettings(
            store="redis", redis_url=server.url, redis_namespace="auth", redis_password="s3cret"
        )
        ranker = await Ranker.open(good, follow=False)
        assert ranker.is_ready()
        await ranker.close()
        wrong = good.model_copy(update={"redis_password": pydantic.SecretStr("nope")})
        ranker = await Ranker.open(wrong, follow=False)
        assert not ranker.is_ready()
        with pytest.raises(NotReady, match="refused our credentials"):
            await ranker.check_ready()
        await ranker.close()
    finally:
        server.stop()


async def test_not_ready_says_why_when_the_only_release_is_refused(
    tmp_path, second_release
) -> None:
    releases = tmp_path / "releases"
    bad = releases / "second-release"
    shutil.copytree(second_release, bad)
    (bad / "model.onnx").write_bytes(b"truncated")
    write_atomic(releases / ACTIVE_FILE, b"second-release")
    ranker = await Ranker.open(
        ServiceSettings(store="embedded", releases_dir=releases, release_poll_interval_s=0.05)
    )
    try:
        await asyncio.sleep(0.2)  # a few polls: the refusal must not be forgotten
        with pytest.raises(NotReady, match=r"second-release refused: .*model\.onnx"):
            await ranker.check_ready()
    finally:
        await ranker.close()
