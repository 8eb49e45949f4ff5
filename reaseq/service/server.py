"""Process entry point: one Ranker served over gRPC and HTTP from the same event loop.

Sharing the loop (and the Ranker) means one feature-store pool, one model session and one
micro-batcher for both transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from reaseq.service.grpc_server import build_grpc_server
from reaseq.service.http_app import create_app
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings

log = logging.getLogger(__name__)

GRACE_S = 5.0  # in-flight requests get this long to finish on SIGTERM


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGINT/SIGTERM for both servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _http_address(server: uvicorn.Server) -> str:
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            return f"http://{host}:{port}"
    return "http://(unknown)"


async def serve(settings: ServiceSettings) -> None:
    """Run both transports until SIGINT/SIGTERM, then drain them and close the Ranker."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    ranker = await Ranker.open(settings)
    try:
        grpc_server, grpc_port = build_grpc_server(ranker, settings.host, settings.grpc_port)
        await grpc_server.start()
        config = uvicorn.Config(
            create_app(ranker, settings),
            host=settings.host,
            port=settings.http_port,
            log_config=None,  # keep the process's logging setup
            access_log=False,
        )
        http_server = _Uvicorn(config)
        http_task = asyncio.create_task(http_server.serve())
        while not http_server.started and not http_task.done():
            await asyncio.sleep(0.05)
        if http_task.done():  # start-up failed (port in use): surface uvicorn's error
            await grpc_server.stop(None)
            await http_task
            raise RuntimeError(
                f"HTTP server failed to start on {settings.host}:{settings.http_port}"
            )
        log.info(
            "serving gRPC on %s:%d and HTTP on %s (ready=%s)",
            settings.host,
            grpc_port,
            _http_address(http_server),
            ranker.is_ready(),
        )

        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_wait, http_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        log.info("shutting down: draining for up to %.0f s", GRACE_S)
        http_server.should_exit = True
        await asyncio.gather(grpc_server.stop(GRACE_S), http_task)
    finally:
        await ranker.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("stopped")


def main() -> None:
    """`python -m reaseq.service.server`: settings from REASEQ_* environment variables."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(ServiceSettings()))


if __name__ == "__main__":
    main()
