"""Value format 2 served end to end, on both stores: each published behavior's gap bucket and
generated flag reach the model with the vectors, the request's recent items follow them as
GAP_RECENT, format-1 releases (three-input models) serve as before, and a release whose model and
manifest disagree on the format, or whose stored value is bad, is refused while the old one
keeps serving."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from reaseq.core import contract
from reaseq.core.codec import UserBehaviors
from reaseq.core.keys import KeySchema
from reaseq.core.release import Snapshot
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher
from reaseq.service.errors import CorruptFeatures
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker, assemble
from reaseq.service.settings import ServiceSettings
from tests.core.tiny_release import BEHAVIORS, tiny_release
from tests.service.recompute import offline_feeds, offline_scores

pytestmark = pytest.mark.anyio
NS = "fmt"


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    return tmp_path / "exports"


def publisher(store: str, tmp_path: Path, redis_client) -> EmbeddedPublisher | RedisPublisher:
    if store == "redis":
        return RedisPublisher(redis_client, KeySchema(NS))
    return EmbeddedPublisher(tmp_path / "releases")


def settings(store: str, tmp_path: Path, redis_server) -> ServiceSettings:
    return ServiceSettings(
        store=store,
        releases_dir=tmp_path / "releases",
        redis_url=redis_server.url,
        redis_namespace=NS,
        release_poll_interval_s=0.1,
    )


def user_with_a_generated_last_behavior(folder: Path) -> tuple[str, UserBehaviors]:
    snap = Snapshot.open(folder)
    for row, user in enumerate(snap.user_ids.tolist()):
        sequence = snap.sequence_of(row)
        if sequence.generated[-1] == 1 and sequence.generated[:-1].min() == 0:
            return user, sequence
    raise AssertionError("the synthetic release has no such user")


@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_generated_behaviors_and_their_buckets_reach_the_model(
    store, tmp_path, exports, redis_client, redis_server, model_feeds
) -> None:
    folder = tiny_release(exports, "fmt2-release", value_format=2)
    publisher(store, tmp_path, redis_client).publish(folder)
    user, published = user_with_a_generated_last_behavior(folder)
    items = [f"i{n:07d}" for n in range(10)]
    query = RankQuery(user, [*items[:5], "no-such-item"], recent_item_ids=[items[7], "x", items[8]])
    ranker = await Ranker.open(settings(store, tmp_path, redis_server), follow=False)
    try:
        model_feeds.clear()  # the warm-up's call
        result = await ranker.rank(query)
    finally:
        await ranker.close()
    assert result.release == "fmt2-release"
    (feeds,) = model_feeds
    assert set(feeds) == {*contract.INPUT_NAMES, *contract.SIDE_INPUT_NAMES}
    # 6 published + 2 known recent, cut to the last max_behaviors = 6: published[2:] + recent
    keep = published.gap_buckets[2:].tolist()
    assert feeds[contract.BEHAVIOR_GAP_BUCKETS].tolist() == [keep + [contract.GAP_RECENT] * 2]
    assert feeds[contract.BEHAVIOR_GAP_BUCKETS].dtype == np.int64
    generated = feeds[contract.BEHAVIOR_GENERATED]
    assert generated.dtype == np.float32
    assert generated.tolist() == [[*published.generated[2:].tolist(), 0.0, 0.0]]
    assert generated[0, BEHAVIORS - 3] == 1.0  # the generated behavior, right before the recent
    assert feeds[contract.BEHAVIOR_MASK].tolist() == [[1.0] * BEHAVIORS]
    want = offline_feeds(folder, user, query.candidate_item_ids, query.recent_item_ids)
    for name, array in want.items():
        np.testing.assert_array_equal(feeds[name], array)
    expected = offline_scores(folder, user, query.candidate_item_ids, query.recent_item_ids)
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    # the side inputs matter: the same behaviors, none generated, score differently
    without = {**want, contract.BEHAVIOR_GENERATED: np.zeros_like(generated)}
    session = ort.InferenceSession((folder / "model.onnx").read_bytes())
    assert not np.allclose(session.run([contract.SCORES], without)[0][0], result.scores)


@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_a_format_1_release_still_serves_with_three_inputs(
    store, tmp_path, exports, redis_client, redis_server, model_feeds
) -> None:
    folder = tiny_release(exports, "fmt1-release", value_format=1)
    publisher(store, tmp_path, redis_client).publish(folder)
    items = [f"i{n:07d}" for n in range(10)]
    ranker = await Ranker.open(settings(store, tmp_path, redis_server), follow=False)
    try:
        for user in ("u0000004", "someone-new"):
            model_feeds.clear()
            query = RankQuery(user, items[:4], recent_item_ids=items[5:7])
            result = await ranker.rank(query)
            assert result.release == "fmt1-release"
            assert set(model_feeds[-1]) == set(contract.INPUT_NAMES)
            expected = offline_scores(folder, user, items[:4], items[5:7])
            np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    finally:
        await ranker.close()


@pytest.mark.parametrize(
    ("value_format", "side_inputs", "why"),
    [
        (1, True, "the model takes the behavior side inputs .* value format 1"),
        (2, False, "the model does not take the behavior side inputs .* value format 2"),
    ],
)
@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_model_and_manifest_must_agree_on_the_value_format(
    store, value_format, side_inputs, why, tmp_path, exports, redis_client, redis_server
) -> None:
    pub = publisher(store, tmp_path, redis_client)
    pub.publish(tiny_release(exports, "good-release", value_format=2))
    bad = tiny_release(exports, "bad-release", value_format, side_inputs=side_inputs, seed=1)
    pub.publish(bad, activate=False)  # publishing never parses the model
    ranker = await Ranker.open(settings(store, tmp_path, redis_server), follow=False)
    try:
        pub.activate("bad-release")
        assert await ranker.refresh() is False
        assert ranker.active_versions()[0] == "good-release"
        detail = ranker.readiness_detail()
        assert detail is not None
        assert re.search(why, detail), detail
        result = await ranker.rank(RankQuery("u0000001", ["i0000001", "i0000002"]))
        assert result.release == "good-release"
    finally:
        await ranker.close()


async def test_a_corrupted_format_2_value_in_redis_is_refused_at_load_not_served(
    tmp_path, exports, redis_client, redis_server
) -> None:
    pub = RedisPublisher(redis_client, KeySchema(NS))
    first = pub.publish(tiny_release(exports, "first-release", value_format=2))
    second = pub.publish(tiny_release(exports, "second-release", 2, seed=1), activate=False)
    key = KeySchema(NS).user(second, "u0000002")
    value = bytearray(redis_client.get(key))
    value[-1] = 7  # the last behavior's generated flag
    redis_client.set(key, bytes(value))
    ranker = await Ranker.open(settings("redis", tmp_path, redis_server), follow=False)
    try:
        redis_client.set(KeySchema(NS).active, second)  # moved by hand, past `activate`
        assert await ranker.refresh() is False
        detail = ranker.readiness_detail()
        assert detail and "user:u0000002" in detail and "generated flag 7" in detail, detail
        result = await ranker.rank(RankQuery("u0000002", ["i0000001"], recent_item_ids=["i3"]))
        assert result.release == first
    finally:
        await ranker.close()


@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_a_flag_corrupted_after_loading_is_a_clear_error(
    store, tmp_path, exports, redis_client, redis_server
) -> None:
    release = publisher(store, tmp_path, redis_client).publish(
        tiny_release(exports, "fmt2-release", value_format=2)
    )
    ranker = await Ranker.open(settings(store, tmp_path, redis_server), follow=False)
    try:
        if store == "redis":
            key = KeySchema(NS).user(release, "u0000002")
            redis_client.set(key, redis_client.get(key)[:-1] + b"\x07")
        else:  # in place: the service's memory map sees it
            flags = np.load(tmp_path / "releases" / release / "features/user_generated.npy", "r+")
            flags[3 * BEHAVIORS - 1] = 7
            flags.flush()
        with pytest.raises(CorruptFeatures, match=r"release fmt2-release .*generated flag 7"):
            await ranker.rank(RankQuery("u0000002", ["i0000001"]))
        assert len((await ranker.rank(RankQuery("u0000001", ["i0000001"]))).scores) == 1
    finally:
        await ranker.close()


def test_assemble_cuts_the_three_behavior_arrays_together() -> None:
    release = SimpleNamespace(manifest=SimpleNamespace(max_behaviors=4, vector_dim=2))
    published = UserBehaviors(
        np.arange(6, dtype=np.float32).reshape(3, 2),
        np.array([1, 5, 9], dtype=np.uint8),
        np.array([0, 0, 1], dtype=np.uint8),
    )
    recent = np.full((2, 2), 10.0, dtype=np.float32)
    inputs = assemble(release, published, recent, np.zeros((3, 2), np.float32))
    assert inputs.behaviors[0, :, 0].tolist() == [2.0, 4.0, 10.0, 10.0]
    assert inputs.gap_buckets.tolist() == [[5, 9, contract.GAP_RECENT, contract.GAP_RECENT]]
    assert inputs.generated.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert inputs.mask.tolist() == [[1.0] * 4]
    assert (inputs.gap_buckets.dtype, inputs.generated.dtype) == (np.int64, np.float32)

    nothing = UserBehaviors(np.zeros((0, 2), np.float32), *np.zeros((2, 0), np.uint8))
    empty = assemble(release, nothing, np.zeros((0, 2), np.float32), np.zeros((3, 2), np.float32))
    assert empty.behaviors.shape == (1, 1, 2) and empty.mask.tolist() == [[0.0]]
    assert empty.gap_buckets.tolist() == [[contract.GAP_UNKNOWN]]
    assert empty.generated.tolist() == [[0.0]]
