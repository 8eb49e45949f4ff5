"""MAKR knowledge in explanations: a release carries each item's knowledge text (export), it is
verified like every other value (files hash, values digest, Redis), and `explain=true` joins it
to every candidate and every attended behavior it can name, on both stores and both transports.
Releases without knowledge are unchanged: same files, same values digest, empty texts."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from reaseq.core.keys import KeySchema
from reaseq.core.release import (
    ITEM_KNOWLEDGE,
    MAX_KNOWLEDGE_CHARS,
    ReleaseCheckError,
    Snapshot,
    read_manifest,
    verify_release_files,
)
from reaseq.core.values import verify_snapshot_values
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher
from reaseq.service.errors import CorruptFeatures
from reaseq.service.grpc_server import build_grpc_server
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.anyio
NS = "knowledge"


def test_export_writes_clean_bounded_knowledge_and_hashes_it(
    knowledge_release: Path, pipeline_run
) -> None:
    manifest = read_manifest(knowledge_release)
    snapshot = Snapshot.open(knowledge_release)
    texts = snapshot.item_knowledge.tolist()
    assert manifest.n_knowledge == 9 == sum(map(bool, texts))  # 10 given, one blank
    assert texts[1] == "Füller für Büro, 万年筆 🖋"
    assert len(texts[2]) <= MAX_KNOWLEDGE_CHARS and texts[2].endswith("word…")
    assert texts[3] == "broken ? text"  # the lone surrogate cannot reach a store or a reply
    assert texts[4] == "" and not any(texts[10:])
    assert ITEM_KNOWLEDGE in manifest.files
    verify_release_files(knowledge_release, manifest)
    snapshot.check_against(manifest)
    plain = pipeline_run.release_dir  # exported with no knowledge: no file, nothing counted
    assert not (plain / ITEM_KNOWLEDGE).exists() and read_manifest(plain).n_knowledge == 0
    assert Snapshot.open(plain).knowledge_of(0) == ""


def test_changed_or_lost_knowledge_file_is_refused(knowledge_release: Path, tmp_path) -> None:
    changed = Path(shutil.copytree(knowledge_release, tmp_path / "changed"))
    texts = Snapshot.open(changed).item_knowledge.copy()
    texts[0] = "a different claim"
    np.save(changed / ITEM_KNOWLEDGE, texts, allow_pickle=False)
    with pytest.raises(ReleaseCheckError, match=r"item_knowledge\.npy has sha256"):
        verify_release_files(changed, read_manifest(changed))
    lost = Path(shutil.copytree(knowledge_release, tmp_path / "lost"))
    (lost / ITEM_KNOWLEDGE).unlink()
    with pytest.raises(ReleaseCheckError, match=r"item_knowledge\.npy is missing"):
        verify_release_files(lost, read_manifest(lost))
    with pytest.raises(ReleaseCheckError, match=r"item_knowledge\.npy is missing"):
        Snapshot.open(lost).check_against(read_manifest(lost))


def test_knowledge_is_part_of_the_values_digest(knowledge_release: Path, pipeline_run) -> None:
    """The same model and snapshot with and without knowledge: different digests, so a changed
    knowledge value in a store is found like a changed vector."""
    with_knowledge = verify_snapshot_values(
        Snapshot.open(knowledge_release), read_manifest(knowledge_release), check_digest=False
    )
    plain = verify_snapshot_values(
        Snapshot.open(pipeline_run.release_dir),
        read_manifest(pipeline_run.release_dir),
        check_digest=False,
    )
    assert with_knowledge != plain


def _expect_knowledge(result, snapshot: Snapshot, candidates: list[str]) -> int:
    """Checks every text against the snapshot; returns how many behaviors carried one."""
    rows = {str(i): r for r, i in enumerate(snapshot.item_ids.tolist())}

    def text(item_id: str) -> str:
        return snapshot.knowledge_of(rows[item_id]) if item_id in rows else ""

    fields = result.response_fields()["explanations"]
    assert [f["knowledge"] for f in fields] == [text(c) for c in candidates]
    named = 0
    for explanation in fields:
        for behavior in explanation["behaviors"]:
            item_id = behavior["item_id"]
            assert behavior["knowledge"] == text(item_id)
            named += bool(behavior["knowledge"])
    return named


async def test_embedded_store_joins_knowledge_to_candidates_and_behaviors(
    knowledge_release: Path, tmp_path
) -> None:
    releases = tmp_path / "releases"
    EmbeddedPublisher(releases).publish(knowledge_release)
    snapshot = Snapshot.open(knowledge_release)
    ids = [str(i) for i in snapshot.item_ids.tolist()]
    ranker = await Ranker.open(ServiceSettings(store="embedded", releases_dir=releases))
    try:
        candidates = [ids[0], ids[1], ids[20], "not-an-item"]
        recent = ids[2:4] + ids[30:32]
        result = await ranker.rank(RankQuery("nobody", candidates, recent, explain=True))
        assert _expect_knowledge(result, snapshot, candidates) > 0
        plain = await ranker.rank(RankQuery("nobody", candidates, recent))
        assert "explanations" not in plain.response_fields()
        np.testing.assert_allclose(plain.scores, result.scores, atol=1e-6)
    finally:
        await ranker.close()


async def test_redis_store_serves_verified_knowledge_over_grpc(
    knowledge_release: Path, redis_client, redis_server
) -> None:
    keys = KeySchema(NS)
    release = RedisPublisher(redis_client, keys).publish(knowledge_release)
    snapshot = Snapshot.open(knowledge_release)
    ids = [str(i) for i in snapshot.item_ids.tolist()]
    settings = ServiceSettings(store="redis", redis_url=redis_server.url, redis_namespace=NS)
    ranker = await Ranker.open(settings)
    server, port = build_grpc_server(ranker, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            request = ranking_pb2.RankRequest(
                user_id="nobody",
                candidate_item_ids=[ids[1], ids[40]],
                recent_item_ids=ids[0:3],
                explain=True,
            )
            response = await stub.Rank(request)
        assert [e.knowledge for e in response.explanations] == [snapshot.knowledge_of(1), ""]
        attended = {b.item_id: b.knowledge for e in response.explanations for b in e.behaviors}
        assert attended == {ids[r]: snapshot.knowledge_of(r) for r in range(3)}

        # a knowledge value changed in Redis after the release was verified: an error, never
        # the changed text (scores without explain do not read it and are still served)
        redis_client.set(keys.knowledge(release, ids[1]), b"\xff\xfe not utf-8")
        with pytest.raises(CorruptFeatures, match="not UTF-8"):
            await ranker.rank(RankQuery("nobody", [ids[1]], explain=True))
        assert len((await ranker.rank(RankQuery("nobody", [ids[1]]))).scores) == 1
    finally:
        await server.stop(None)
        await ranker.close()


def test_a_changed_knowledge_value_in_redis_is_refused_at_activation(
    knowledge_release: Path, redis_client
) -> None:
    keys = KeySchema(NS + "-refuse")
    pub = RedisPublisher(redis_client, keys)
    release = pub.publish(knowledge_release, activate=False)
    item = str(Snapshot.open(knowledge_release).item_ids[0])
    redis_client.set(keys.knowledge(release, item), "a claim nobody verified")
    with pytest.raises(ReleaseCheckError, match="digest"):
        pub.activate(release)
    assert pub.active() is None
