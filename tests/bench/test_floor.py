"""The floor answers Rank on both transports with one constant score per candidate, and nothing
else: no release, no features, no model."""

import grpc
import httpx
import pytest

from reaseq.bench.floor import SCORE, VERSION, build_floor_grpc_server, create_floor_app
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.anyio
IDS = [f"item-{i}" for i in range(7)]


async def test_grpc_floor_answers_one_score_per_candidate() -> None:
    server, port = build_floor_grpc_server("127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            request = ranking_pb2.RankRequest(
                user_id="u", candidate_item_ids=IDS, recent_item_ids=["r"]
            )
            reply = await stub.Rank(request, timeout=5)
    finally:
        await server.stop(None)
    assert list(reply.scores) == [SCORE] * len(IDS)
    assert (reply.release, reply.model_version, reply.feature_version) == (VERSION,) * 3


async def test_http_floor_answers_the_service_json_shape() -> None:
    transport = httpx.ASGITransport(app=create_floor_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://floor") as client:
        body = {"user_id": "u", "candidate_item_ids": IDS, "recent_item_ids": ["r"]}
        reply = (await client.post("/v1/rank", json=body)).json()
        assert (await client.get("/healthz")).status_code == 200
    assert reply["scores"] == [SCORE] * len(IDS)
    assert reply["release"] == VERSION and reply["unknown_item_indices"] == []
