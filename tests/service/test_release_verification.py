"""A release is verified down to its values before it is named or served, on both stores.

Corrupted values (garbage bytes, NaN of the right length, a broken behavior header, a key added
or lost) are refused by `activate` and by the service, which keeps serving the old release; an
instance that starts on a refused pointer serves the best kept release that passes and says so;
scores are never NaN; a Redis restart under load loses no request once Redis answers again.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from reaseq.core.codec import encode_vector
from reaseq.core.keys import KeySchema
from reaseq.core.release import (
    ACTIVE_FILE,
    ITEM_VECTORS,
    MANIFEST_FILE,
    ReleaseCheckError,
    Snapshot,
    read_manifest,
    write_atomic,
)
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher, describe, rollback_target
from reaseq.service import metrics
from reaseq.service.errors import CorruptFeatures, InvalidModelOutput, NotReady
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings

pytestmark = pytest.mark.anyio
NS = "verify"


def redis_settings(url: str, **extra) -> ServiceSettings:
    return ServiceSettings(
        store="redis", redis_url=url, redis_namespace=NS, release_poll_interval_s=0.1, **extra
    )


def nan_vector(dim: int) -> bytes:
    return encode_vector(np.full(dim, np.nan, dtype=np.float32))


def corruptions(dim: int, user_key: str, item_key: str, keys: KeySchema, release: str):
    """(what, key, value or None to delete) — each a real way a stored release goes bad."""
    return {
        "garbage item": (item_key, b"garbage"),
        "NaN item of the right length": (item_key, nan_vector(dim)),
        "user with a broken header": (user_key, b"XXXX" + b"\0" * 40),
        "user truncated": (user_key, None),  # filled in by the test: header kept, payload cut
        "extra item key": (keys.item(release, "zz-injected"), encode_vector(np.zeros(dim))),
        "item deleted": (item_key, "DELETE"),
    }


@pytest.fixture
def published(redis_client, pipeline_run, second_release):
    """First release active, the second published but not active."""
    keys = KeySchema(NS)
    pub = RedisPublisher(redis_client, keys)
    first = pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    return pub, keys, first, second


@pytest.mark.parametrize(
    "what",
    [
        "garbage item",
        "NaN item of the right length",
        "user with a broken header",
        "user truncated",
        "extra item key",
        "item deleted",
    ],
)
async def test_a_value_corrupted_in_redis_is_refused_by_activate_and_by_the_service(
    what, published, redis_client, redis_server, release_ids
) -> None:
    pub, keys, first, second = published
    manifest = pub.verify(second)
    user, items = release_ids
    key, value = corruptions(
        manifest.vector_dim, keys.user(second, user), keys.item(second, items[0]), keys, second
    )[what]
    if what == "user truncated":
        value = redis_client.get(key)[:-2]
    if value == "DELETE":
        redis_client.delete(key)
    else:
        redis_client.set(key, value)

    with pytest.raises(ReleaseCheckError, match=second):
        pub.activate(second)  # verified before the pointer moves: it does not move
    assert pub.active() == first

    ranker = await Ranker.open(redis_settings(redis_server.url), follow=False)
    try:
        refused_before = metrics.RELEASES_REFUSED._value.get()
        redis_client.set(keys.active, second)  # another tool moved the pointer anyway
        assert await ranker.refresh() is False
        assert metrics.RELEASES_REFUSED._value.get() == refused_before + 1
        result = await ranker.rank(RankQuery(user, items, recent_item_ids=items[:3]))
        assert result.release == first
        assert all(np.isfinite(result.scores))
        detail = ranker.readiness_detail()
        assert detail is not None and f"names {second}, which was refused" in detail
        assert metrics.RELEASE_FALLBACK._value.get() == 1
        redis_client.set(keys.active, first)  # pointer back: nothing to report any more
        await ranker.refresh()
        assert ranker.readiness_detail() is None
        assert metrics.RELEASE_FALLBACK._value.get() == 0
    finally:
        await ranker.close()


async def test_instance_started_on_a_refused_pointer_serves_the_last_good_release(
    published, redis_client, redis_server, release_ids, second_release
) -> None:
    pub, keys, first, second = published
    pub.activate(second)  # history: first, second
    redis_client.set(keys.item(second, release_ids[1][0]), b"garbage")  # broken after activation
    ranker = await Ranker.open(redis_settings(redis_server.url), follow=False)
    try:
        assert ranker.is_ready(), "a refused pointer at start-up must not mean 503 forever"
        assert ranker.active_versions()[0] == first
        detail = ranker.readiness_detail()
        assert detail and second in detail and "refused" in detail and first in detail
        assert metrics.RELEASE_FALLBACK._value.get() == 1
        result = await ranker.rank(RankQuery(*release_ids))
        assert result.release == first
        # the named release is republished intact: the service follows the pointer again
        pub.delete_release_keys(second)
        redis_client.zrem(keys.releases, second)
        assert pub.publish(second_release, activate=True) == second
        ranker._refusals.clear()  # an operator-triggered retry (a republish of the same id)
        assert await ranker.refresh() is True
        assert ranker.active_versions()[0] == second
        assert ranker.readiness_detail() is None
    finally:
        await ranker.close()


async def test_embedded_instance_started_on_a_refused_pointer_falls_back(
    tmp_path, pipeline_run, second_release, release_ids
) -> None:
    releases = tmp_path / "releases"
    pub = EmbeddedPublisher(releases)
    first = pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release)
    (releases / second / "model.onnx").write_bytes(b"truncated")
    ranker = await Ranker.open(
        ServiceSettings(store="embedded", releases_dir=releases, release_poll_interval_s=0.1),
        follow=False,
    )
    try:
        assert ranker.active_versions()[0] == first
        assert "model.onnx" in ranker.readiness_detail()
        assert (await ranker.rank(RankQuery(*release_ids))).release == first
    finally:
        await ranker.close()


def _rewrite_with_nan_but_valid_hashes(src: Path, dst: Path, name: str) -> None:
    """A release folder whose file hashes are consistent but whose vectors hold NaN: what a
    broken export (or a tool that rewrote the files and the manifest) would leave behind."""
    from reaseq.core.release import combine_hashes, sha256_file, snapshot_files

    shutil.copytree(src, dst)
    vectors = np.load(dst / ITEM_VECTORS)
    vectors[3] = np.nan
    np.save(dst / ITEM_VECTORS, vectors, allow_pickle=False)
    manifest = read_manifest(dst)
    files = dict(manifest.files) | {ITEM_VECTORS: sha256_file(dst / ITEM_VECTORS)}
    snapshot = combine_hashes([files[n] for n in snapshot_files(manifest.value_format)])
    (dst / MANIFEST_FILE).write_text(
        manifest.model_copy(
            update={"release": name, "files": files, "snapshot_sha256": snapshot}
        ).model_dump_json()
    )


def test_publish_refuses_nan_values_even_with_matching_file_hashes(
    tmp_path, pipeline_run, redis_client
) -> None:
    bad = tmp_path / "nan-release"
    _rewrite_with_nan_but_valid_hashes(pipeline_run.release_dir, bad, "nan-release")
    with pytest.raises(ReleaseCheckError, match="NaN"):
        EmbeddedPublisher(tmp_path / "releases").publish(bad)
    with pytest.raises(ReleaseCheckError, match="NaN"):
        RedisPublisher(redis_client, KeySchema(NS)).publish(bad)
    assert redis_client.get(KeySchema(NS).active) is None


async def test_embedded_release_with_nan_values_is_refused_by_the_service(
    ranker: Ranker, releases_dir: Path, pipeline_run, release_ids
) -> None:
    first = ranker.active_versions()[0]
    # the published manifest carries the digest; the values under it changed
    published = releases_dir / first
    _rewrite_with_nan_but_valid_hashes(published, releases_dir / "nan-release", "nan-release")
    write_atomic(releases_dir / ACTIVE_FILE, b"nan-release")
    assert await ranker.refresh() is False
    assert "nan-release" in ranker.readiness_detail()
    assert (await ranker.rank(RankQuery(*release_ids))).release == first


def test_one_broken_manifest_breaks_neither_list_nor_rollback(
    tmp_path, pipeline_run, second_release, redis_client
) -> None:
    releases = tmp_path / "releases"
    emb = EmbeddedPublisher(releases)
    first = emb.publish(pipeline_run.release_dir)
    second = emb.publish(second_release)
    broken = releases / "broken-release"
    shutil.copytree(releases / first, broken)
    (broken / MANIFEST_FILE).write_text('{"release": "broken-release", "not": "a manifest"')
    keys = KeySchema(NS)
    red = RedisPublisher(redis_client, keys)
    red.publish(pipeline_run.release_dir)
    red.publish(second_release)
    redis_client.zadd(keys.releases, {"broken-release": 1.0})
    redis_client.set(keys.manifest("broken-release"), b"\xff not json")

    for pub in (emb, red):
        infos = {i.release: i for i in describe(pub)}
        assert infos["broken-release"].problem.startswith("manifest is unreadable")
        assert infos[second].active and infos[first].problem is None
        available = {m.release for m in pub.complete()}
        assert rollback_target(pub.history(), pub.active(), available) == first
        pub.activate(first)
        assert pub.active() == first
        with pytest.raises(ReleaseCheckError, match="unreadable"):
            pub.activate("broken-release")
        assert pub.active() == first


async def test_a_nan_reaching_the_model_is_an_error_never_a_score(
    service_settings, releases_dir: Path, release_ids, monkeypatch
) -> None:
    """The embedded store memory-maps its vectors (a catalog too big for its float32 copy): a
    file changed on disk under a running service reaches the model. The service answers with an
    error, never NaN (JSON `null`)."""
    monkeypatch.setattr("reaseq.service.store.F32_ITEM_CACHE_BYTES", 0)
    ranker = await Ranker.open(service_settings, follow=False)
    try:
        await _nan_reaching_the_model(ranker, releases_dir, release_ids)
    finally:
        await ranker.close()


async def _nan_reaching_the_model(ranker: Ranker, releases_dir: Path, release_ids) -> None:
    user, items = release_ids
    release = ranker.active_versions()[0]
    snap = Snapshot.open(releases_dir / release)
    row = snap.item_ids.tolist().index(items[0])
    path = releases_dir / release / ITEM_VECTORS
    header = path.stat().st_size - snap.item_vectors.nbytes
    with path.open("r+b") as fh:  # in place: the service's mmap sees it
        fh.seek(header + row * snap.dim * 2)
        fh.write(nan_vector(snap.dim))
    ok = await ranker.rank(RankQuery(user, items[1:4]))
    assert all(np.isfinite(ok.scores))
    with pytest.raises(InvalidModelOutput, match="non-finite"):
        await ranker.rank(RankQuery(user, items[1:4], recent_item_ids=[items[0]]))

    import httpx

    from reaseq.service.http_app import create_app

    transport = httpx.ASGITransport(app=create_app(ranker))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        body = {"user_id": user, "candidate_item_ids": items[1:4], "recent_item_ids": [items[0]]}
        response = await http.post("/v1/rank", json=body)
    assert response.status_code == 500
    assert response.json()["error"] == "invalid_model_output"
    assert "null" not in response.text


async def test_a_value_corrupted_after_loading_is_a_clear_error(
    published, redis_client, redis_server, release_ids
) -> None:
    _, keys, first, _ = published
    user, items = release_ids
    ranker = await Ranker.open(redis_settings(redis_server.url), follow=False)
    try:
        redis_client.set(keys.item(first, items[0]), b"garbage")
        with pytest.raises(CorruptFeatures, match=first):
            await ranker.rank(RankQuery(user, items[:3]))
        redis_client.set(keys.item(first, items[0]), nan_vector(ranker._active.manifest.vector_dim))
        with pytest.raises(CorruptFeatures, match="NaN"):
            await ranker.rank(RankQuery(user, items[1:3], recent_item_ids=[items[0]]))
        assert len((await ranker.rank(RankQuery(user, items[1:4]))).scores) == 3
    finally:
        await ranker.close()


async def test_redis_killed_and_restarted_under_load_loses_nothing_once_it_answers(
    published, redis_client, redis_server, release_ids
) -> None:
    """Pooled connections opened before the restart are dead; without a retry on a fresh
    connection each fails one later request, whenever load grows enough to reach it. So: grow
    the pool with a burst, keep steady load through the kill and the restart, then burst again."""
    user, items = release_ids
    query = RankQuery(user, items, recent_item_ids=items[:2])
    ranker = await Ranker.open(redis_settings(redis_server.url), follow=False)
    back_at: list[float] = []
    after_errors: list[BaseException] = []
    served_after = 0
    stop = time.monotonic() + 5.0

    async def one() -> None:
        nonlocal served_after
        started = time.monotonic()
        try:
            await ranker.rank(query)
            served_after += bool(back_at and started > back_at[0])
        except Exception as err:
            if back_at and started > back_at[0]:
                after_errors.append(err)
            await asyncio.sleep(0.01)

    async def steady() -> None:
        while time.monotonic() < stop:
            await one()

    try:
        redis_client.save()  # the restarted server reloads the release from its dump
        await asyncio.gather(*(one() for _ in range(32)))  # the pool grows to ~32 connections
        load = [asyncio.create_task(steady()) for _ in range(3)]
        await asyncio.sleep(0.5)
        redis_server.proc.kill()  # kill -9: no goodbye to the clients
        redis_server.proc.wait()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.start)  # returns once it answers PING
        back_at.append(time.monotonic())
        for _ in range(5):  # bursts reach the connections that sat idle through the restart
            await asyncio.gather(*(one() for _ in range(32)))
            await asyncio.sleep(0.2)
        await asyncio.gather(*load)
    finally:
        await ranker.close()
    assert served_after > 100
    assert after_errors == [], f"{len(after_errors)} errors after Redis answered: {after_errors[0]}"


def test_verification_reads_the_values_not_only_the_manifest(published, redis_client) -> None:
    """The check that `activate` runs touches every value: a single flipped byte is found."""
    pub, keys, _, second = published
    manifest = pub.verify(second)
    user_keys = list(redis_client.scan_iter(match=keys.prefix(second) + "user:*"))
    key = sorted(user_keys)[-1]
    value = bytearray(redis_client.get(key))
    header = struct.calcsize("<4sHH")
    assert len(value) > header, "the fixture user has behaviors"
    value[header] ^= 0x01  # a finite float16 stays finite: only the digest can tell
    redis_client.set(key, bytes(value))
    with pytest.raises(ReleaseCheckError, match="digest"):
        pub.verify(second)
    assert manifest.values_sha256


async def test_a_release_published_before_value_digests_is_refused_then_republished(
    redis_client, redis_server, pipeline_run, tmp_path, release_ids
) -> None:
    """Old releases carry no digest: the service refuses them clearly, and publishing the same
    export again records the digest (after checking the stored values) instead of failing."""
    keys = KeySchema(NS)
    red = RedisPublisher(redis_client, keys)
    release = red.publish(pipeline_run.release_dir)
    old = red.verify(release).model_copy(update={"values_sha256": None})
    redis_client.set(keys.manifest(release), old.model_dump_json())
    ranker = await Ranker.open(redis_settings(redis_server.url), follow=False)
    try:
        assert not ranker.is_ready()
        with pytest.raises(NotReady, match=r"no values digest.*publish it again"):
            await ranker.rank(RankQuery(*release_ids))
    finally:
        await ranker.close()
    assert red.publish(pipeline_run.release_dir) == release
    assert red.verify(release).values_sha256

    emb = EmbeddedPublisher(tmp_path / "releases")
    release = emb.publish(pipeline_run.release_dir)
    folder = tmp_path / "releases" / release
    (folder / MANIFEST_FILE).write_text(
        read_manifest(folder).model_copy(update={"values_sha256": None}).model_dump_json()
    )
    with pytest.raises(ReleaseCheckError, match="no values digest"):
        emb.activate(release)
    assert emb.publish(pipeline_run.release_dir) == release
    assert emb.verify(release).values_sha256
