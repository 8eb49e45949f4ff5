"""The floor: a Rank server on the service's contract that reads no features and runs no model.

It parses the request and answers constant scores (one per candidate) with version strings, over
gRPC (the same proto) and HTTP (the same JSON bodies as `POST /v1/rank`). What the matrix measures
against it is what transport, serialisation and the benchmark client cost alone, so the service's
numbers can be read as "floor + features + model".

    python -m reaseq.bench.floor --port 50200 --http-port 8200
"""

from __future__ import annotations

import asyncio

import grpc
from fastapi import FastAPI

from reaseq.bench.serving import port_args, serve_until_signal
from reaseq.service.http_app import RANK_PATH, RankRequestBody, RankResponseBody
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

SCORE = 0.5
VERSION = "floor"  # release, model_version and feature_version all say what answered


class FloorServicer(ranking_pb2_grpc.RankingServiceServicer):
    """Rank with nothing behind it."""

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        return ranking_pb2.RankResponse(
            scores=[SCORE] * len(request.candidate_item_ids),
            release=VERSION,
            model_version=VERSION,
            feature_version=VERSION,
        )


def build_floor_grpc_server(host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Create (not start) the gRPC floor; port 0 picks a free one. Same server options as the
    service's (no SO_REUSEPORT)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(FloorServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    return server, bound


def create_floor_app() -> FastAPI:
    """`POST /v1/rank` with the service's request and response models (so parsing and
    serialising cost what they cost there), plus `/healthz`."""
    app = FastAPI(title="reaseq floor", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(RANK_PATH, response_model=RankResponseBody)
    async def rank(body: RankRequestBody) -> RankResponseBody:
        return RankResponseBody(
            scores=[SCORE] * len(body.candidate_item_ids),
            release=VERSION,
            model_version=VERSION,
            feature_version=VERSION,
            unknown_user=False,
            unknown_item_indices=[],
            unknown_recent_indices=[],
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def serve(host: str, grpc_port: int, http_port: int) -> None:
    server, _ = build_floor_grpc_server(host, grpc_port)
    await server.start()
    try:
        await serve_until_signal(create_floor_app(), host, http_port)
    finally:
        await server.stop(1.0)


def main() -> None:
    args = port_args(__doc__.splitlines()[0]).parse_args()
    asyncio.run(serve(args.host, args.port, args.http_port))


if __name__ == "__main__":
    main()
