"""Fixtures shared by the service tests: a real gRPC server over the `ranker` fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from reaseq.service.grpc_server import build_grpc_server
from reaseq.service.ranking import Ranker


@pytest.fixture
async def channel(ranker: Ranker) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a real gRPC server (free port) serving the shared Ranker."""
    server, port = build_grpc_server(ranker, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)
