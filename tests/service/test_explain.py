"""`explain`: each candidate's most attended behaviors, from the model's attention output, on both
transports; the same scores as without it; positions mapped to the right behaviors; generated
behaviors flagged; a model without attention refused clearly, scores still served."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from reaseq.core.release import Snapshot
from reaseq.offline.publish import EmbeddedPublisher
from reaseq.service.errors import ExplainUnavailable
from reaseq.service.http_app import create_app
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc
from tests.core.tiny_release import tiny_release

pytestmark = pytest.mark.anyio


async def test_explanations_name_the_attended_behaviors_and_keep_the_scores(
    ranker: Ranker, release_ids, releases_dir: Path
) -> None:
    user, items = release_ids
    recent = items[5:8]
    plain = await ranker.rank(RankQuery(user, items[:5], recent_item_ids=recent))
    explained = await ranker.rank(RankQuery(user, items[:5], recent_item_ids=recent, explain=True))
    np.testing.assert_allclose(explained.scores, plain.scores, atol=1e-6)
    assert plain.explanations is None and "explanations" not in plain.response_fields()
    assert len(explained.explanations) == 5
    snapshot = Snapshot.open(releases_dir / explained.release)
    known = {str(i) for i in snapshot.item_ids}
    max_len = ranker._active.manifest.max_behaviors
    for behaviors in explained.explanations:
        assert 0 < len(behaviors) <= ranker.settings.explain_top_k
        weights = [b["weight"] for b in behaviors]
        assert weights == sorted(weights, reverse=True) and sum(weights) <= 1 + 1e-5
        for b in behaviors:
            assert 0 <= b["position"] < max_len
            assert b["source"] in ("published", "recent")
            if b["source"] == "recent":
                assert b["item_id"] in recent and b["gap_bucket"] == 2
            else:  # the pipeline's release has no GBR: every published behavior is real
                assert b["item_id"] in known and not b["generated"]


async def test_positions_map_to_the_behaviors_the_model_read(ranker: Ranker, release_ids) -> None:
    """An unknown user: the sequence is exactly the recent items, so position j is recent[j],
    and dot attention's weights over all of them sum to 1."""
    _, items = release_ids
    recent = items[2:5]
    result = await ranker.rank(
        RankQuery("nobody-has-this-id", items[:2], recent_item_ids=recent, explain=True)
    )
    for behaviors in result.explanations:
        assert sorted(b["position"] for b in behaviors) == [0, 1, 2]
        assert all(b["item_id"] == recent[b["position"]] for b in behaviors)
        assert sum(b["weight"] for b in behaviors) == pytest.approx(1.0, abs=1e-5)
    empty = await ranker.rank(RankQuery("nobody-has-this-id", items[:2], explain=True))
    assert empty.explanations == [[], []], "no history: nothing was attended to"


async def test_explain_over_grpc_and_http_agree(ranker: Ranker, channel, release_ids) -> None:
    user, items = release_ids
    stub = ranking_pb2_grpc.RankingServiceStub(channel)
    response = await stub.Rank(
        ranking_pb2.RankRequest(
            user_id=user, candidate_item_ids=items[:3], recent_item_ids=items[3:5], explain=True
        )
    )
    transport = httpx.ASGITransport(app=create_app(ranker))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        body = {
            "user_id": user,
            "candidate_item_ids": items[:3],
            "recent_item_ids": items[3:5],
            "explain": True,
        }
        reply = (await http.post("/v1/rank", json=body)).json()
    assert len(response.explanations) == len(reply["explanations"]) == 3
    for over_grpc, over_http in zip(response.explanations, reply["explanations"], strict=True):
        assert [b.position for b in over_grpc.behaviors] == [
            b["position"] for b in over_http["behaviors"]
        ]
        assert [b.item_id for b in over_grpc.behaviors] == [
            b["item_id"] for b in over_http["behaviors"]
        ]
        np.testing.assert_allclose(
            [b.weight for b in over_grpc.behaviors],
            [b["weight"] for b in over_http["behaviors"]],
            atol=1e-6,
        )


async def test_generated_behaviors_are_flagged_and_have_no_id(
    gbr_pipeline_run, tmp_path: Path
) -> None:
    releases = tmp_path / "releases"
    EmbeddedPublisher(releases).publish(gbr_pipeline_run.release_dir)
    ranker = await Ranker.open(
        ServiceSettings(store="embedded", releases_dir=releases, explain_top_k=50), follow=False
    )
    try:
        snapshot = ranker._active.features.snapshot
        users = np.flatnonzero(
            [snapshot.sequence_of(u).generated.any() for u in range(len(snapshot.user_ids))]
        )
        assert len(users), "the GBR release has users with generated behaviors"
        user = str(snapshot.user_ids[users[0]])
        items = [str(i) for i in snapshot.item_ids[:3]]
        result = await ranker.rank(RankQuery(user, items, explain=True))
        generated = [b for b in result.explanations[0] if b["generated"]]
        real = [b for b in result.explanations[0] if not b["generated"]]
        assert generated and all(b["item_id"] == "" for b in generated)
        assert real and all(b["item_id"] for b in real), "real published behaviors are named"
    finally:
        await ranker.close()


async def test_a_model_without_attention_refuses_explain_and_still_scores(
    tmp_path: Path,
) -> None:
    folder = tiny_release(tmp_path / "exports", "tiny-no-attention", value_format=2)
    releases = tmp_path / "releases"
    EmbeddedPublisher(releases).publish(folder)
    ranker = await Ranker.open(ServiceSettings(store="embedded", releases_dir=releases))
    try:
        snapshot = ranker._active.features.snapshot
        user, items = str(snapshot.user_ids[0]), [str(i) for i in snapshot.item_ids[:3]]
        assert len((await ranker.rank(RankQuery(user, items))).scores) == 3
        with pytest.raises(ExplainUnavailable, match="without attention output"):
            await ranker.rank(RankQuery(user, items, explain=True))
        assert ExplainUnavailable.grpc_code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await ranker.close()
