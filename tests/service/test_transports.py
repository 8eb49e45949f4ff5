"""HTTP and gRPC over one real Ranker: same answers, same errors, health, metrics, reflection.

Uses the `ranker` fixture (an open Ranker over a small published release, from tests/conftest.py)
and, when conftest offers it, `release_ids` = (a known user id, known item ids).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from reaseq.service.grpc_server import build_grpc_server, to_query
from reaseq.service.http_app import create_app
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.anyio

UNKNOWN_ITEM = "zz-no-such-item"


@pytest.fixture
def ids(request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    """(user_id, item_ids) known to the fixture release if conftest says so, else plain ids."""
    try:
        user_id, item_ids = request.getfixturevalue("release_ids")
        return str(user_id), [str(i) for i in item_ids]
    except pytest.FixtureLookupError:
        return "u1", [f"i{n}" for n in range(8)]


@pytest.fixture
async def http(ranker: Ranker) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(ranker))
    async with httpx.AsyncClient(transport=transport, base_url="http://reaseq.test") as client:
        yield client


def body(user_id: str, items: list[str], recent: list[str] | None = None) -> dict[str, Any]:
    return {"user_id": user_id, "candidate_item_ids": items, "recent_item_ids": recent or []}


async def grpc_rank(channel: grpc.aio.Channel, payload: dict[str, Any]) -> Any:
    stub = ranking_pb2_grpc.RankingServiceStub(channel)
    return await stub.Rank(ranking_pb2.RankRequest(**payload), timeout=10)


async def test_http_and_grpc_return_identical_answers(
    http: httpx.AsyncClient, channel: grpc.aio.Channel, ids: tuple[str, list[str]]
) -> None:
    user_id, items = ids
    payload = body(user_id, items[::-1], recent=items[:3])
    response = await http.post("/v1/rank", json=payload)
    assert response.status_code == 200, response.text
    got = response.json()
    reply = await grpc_rank(channel, payload)

    assert len(got["scores"]) == len(items) == len(reply.scores)
    # the proto carries float32: compare at that precision, bit for bit
    assert np.array_equal(np.float32(got["scores"]), np.float32(list(reply.scores)))
    assert all(0.0 <= s <= 1.0 for s in got["scores"])
    for key in ("release", "model_version", "feature_version", "unknown_user", "degraded"):
        assert got[key] == getattr(reply, key), key
    assert got["unknown_item_indices"] == list(reply.unknown_item_indices)
    assert got["unknown_recent_indices"] == list(reply.unknown_recent_indices)
    assert got["release"] and got["model_version"] and got["feature_version"]


@pytest.mark.parametrize("case", ["empty", "oversized", "blank_id"])
async def test_bad_candidates_are_invalid_on_both_transports(
    ranker: Ranker, http: httpx.AsyncClient, channel: grpc.aio.Channel, case: str
) -> None:
    items = {
        "empty": [],
        "oversized": [f"i{n}" for n in range(ranker.limits.max_candidates + 1)],
        "blank_id": ["i1", ""],
    }[case]
    payload = body("u1", items)
    response = await http.post("/v1/rank", json=payload)
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "invalid_request" and error["message"]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_rank(channel, payload)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == error["message"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"user_id": "u1", "candidate_item_ids": ["i1"], "surprise": 1}',  # extra field
        b'{"user_id": "u1", "candidate_item_ids": "i1"}',  # not a list
        b'{"user_id": 7, "candidate_item_ids": ["i1"]}',  # not a string
        b'{"candidate_item_ids": ["i1"]}',  # missing user
        b'{"user_id": "u1", "candidate_item_ids": ["i1"], "deadline_ms": -5}',
        b"{not json",
        b"",
    ],
)
async def test_malformed_http_bodies_are_400_not_422(
    http: httpx.AsyncClient, content: bytes
) -> None:
    response = await http.post(
        "/v1/rank", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "invalid_request"
    assert isinstance(error["message"], str) and error["message"]


async def test_unknown_items_and_user_are_flagged_not_errors(
    http: httpx.AsyncClient, channel: grpc.aio.Channel, ids: tuple[str, list[str]]
) -> None:
    _, items = ids
    candidates = [*items[:2], UNKNOWN_ITEM]
    payload = body("zz-no-such-user", candidates, recent=[UNKNOWN_ITEM])
    response = await http.post("/v1/rank", json=payload)
    assert response.status_code == 200, response.text
    got = response.json()
    assert len(got["scores"]) == 3
    assert 2 in got["unknown_item_indices"]
    assert got["unknown_recent_indices"] == [0]
    assert got["unknown_user"] is True

    reply = await grpc_rank(channel, payload)
    assert 2 in reply.unknown_item_indices and reply.unknown_user


async def test_health_readiness_and_metrics(
    http: httpx.AsyncClient, ids: tuple[str, list[str]]
) -> None:
    assert (await http.get("/healthz")).status_code == 200
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["release"]

    user_id, items = ids
    assert (await http.post("/v1/rank", json=body(user_id, items))).status_code == 200
    text = (await http.get("/metrics")).text
    assert 'reaseq_requests_total{outcome="ok",transport="http"}' in text
    for name in (
        "reaseq_stage_latency_seconds_bucket",
        "reaseq_candidates_per_request_count",
        "reaseq_errors_total",
        "reaseq_unknown_items_total",
        "reaseq_active_release{",
    ):
        assert name in text, name


async def test_grpc_health_is_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "reaseq.v1.RankingService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_grpc_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
        names = {s.name for s in reply.list_services_response.service}
        assert {"reaseq.v1.RankingService", "grpc.health.v1.Health"} <= names
        break


async def test_without_a_release_readiness_fails_but_liveness_holds(tmp_path: Path) -> None:
    empty = await Ranker.open(ServiceSettings(store="embedded", releases_dir=tmp_path))
    server, port = build_grpc_server(empty, "127.0.0.1", 0)
    await server.start()
    try:
        transport = httpx.ASGITransport(app=create_app(empty))
        async with httpx.AsyncClient(transport=transport, base_url="http://reaseq.test") as http:
            assert (await http.get("/healthz")).status_code == 200
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
            response = await http.post("/v1/rank", json=body("u1", ["i1"]))
            assert response.status_code == 503 and response.json()["error"] == "not_ready"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await grpc_rank(channel, body("u1", ["i1"]))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
        await empty.close()


async def test_lifespan_opens_and_closes_its_own_ranker(service_settings: ServiceSettings) -> None:
    app = create_app(settings=service_settings)
    async with app.router.lifespan_context(app):
        assert app.state.ranker is not None and app.state.ranker.is_ready()
    assert app.state.ranker is None


def test_grpc_call_deadline_tightens_the_request_deadline() -> None:
    request = ranking_pb2.RankRequest(user_id="u", candidate_item_ids=["i"], deadline_ms=50)
    assert to_query(request, None).deadline_ms == 50
    assert to_query(request, 0.02).deadline_ms == 20
    assert to_query(request, 5.0).deadline_ms == 50
    assert to_query(ranking_pb2.RankRequest(user_id="u"), None).deadline_ms is None
    assert to_query(ranking_pb2.RankRequest(user_id="u"), 0.0).deadline_ms == 1
