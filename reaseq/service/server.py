"""Process entry point: one Ranker served over gRPC and HTTP from the same event loop.

Sharing the loop (and the Ranker) means one feature-store pool, one model session and one
micro-batcher for both transports. Both ports are bound exclusively (no SO_REUSEPORT) before
anything else starts, so a second server on a taken port fails at once with one `PortInUse` line
instead of silently sharing the port or printing uvicorn's traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from reaseq.service.access import Access
from reaseq.service.errors import AccessConfigError, CannotBind, DeviceUnavailable, PortInUse
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


def bind_tcp(host: str, port: int, transport: str) -> socket.socket:
    """A listening TCP socket on host:port, bound exclusively (SO_REUSEADDR only, as servers do,
    never SO_REUSEPORT); a taken port is `PortInUse`, any other bind failure `CannotBind`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, reuse_port=False)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"{transport} port {where} is already in use: another server (a second "
                f"`reaseq serve`?) listens there; stop it or choose another port"
            ) from None
        raise CannotBind(f"{transport} cannot listen on {where}: {err.strerror}") from None
    # accepted connections inherit this; asyncio sets it only on sockets made with
    # proto=IPPROTO_TCP, and without it each small response waited for the peer's delayed ACK
    # (~40 ms per HTTP request, measured)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def http_config(app: FastAPI, settings: ServiceSettings) -> uvicorn.Config:
    """uvicorn's settings: our logging, no access log, and no `server: uvicorn` header."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_config=None,  # keep the process's logging setup
        access_log=False,
        server_header=False,  # callers need not learn what software (and version) answers
    )


def _http_address(server: uvicorn.Server) -> str:
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            return f"http://{host}:{port}"
    return "http://(unknown)"


async def serve(settings: ServiceSettings) -> None:
    """Run both transports until SIGINT/SIGTERM, then drain them and close the Ranker.

    Access settings (tokens, TLS files) are checked and both ports taken first, before the (slow)
    release load, so a bad file or a port clash fails in milliseconds with one clear line.
    """
    access = Access.from_settings(settings)
    http_socket = bind_tcp(settings.host, settings.http_port, "HTTP")
    with contextlib.closing(http_socket):  # uvicorn closes it on shutdown; twice is harmless
        if settings.grpc_port:  # a probe: gRPC binds its own socket, but reports a clash only
            bind_tcp(settings.host, settings.grpc_port, "gRPC").close()  # as a C-core log line
        await _serve_on(settings, access, http_socket)


async def _serve_on(settings: ServiceSettings, access: Access, http_socket: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    ranker = await Ranker.open(settings)
    try:
        grpc_server, grpc_port = build_grpc_server(
            ranker, settings.host, settings.grpc_port, access
        )
        await grpc_server.start()
        app = create_app(ranker, settings, access.tokens)
        http_server = _Uvicorn(http_config(app, settings))
        http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
        while not http_server.started and not http_task.done():
            await asyncio.sleep(0.05)
        if http_task.done():  # start-up failed after binding (e.g. the app's lifespan)
            await grpc_server.stop(None)
            await http_task
            raise RuntimeError(
                f"HTTP server failed to start on {settings.host}:{settings.http_port}"
            )
        log.info(
            "serving gRPC on %s:%d and HTTP on %s (ready=%s; %s)",
            settings.host,
            grpc_port,
            _http_address(http_server),
            ranker.is_ready(),
            access.describe(),
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
    try:
        asyncio.run(serve(ServiceSettings()))
    except (AccessConfigError, CannotBind, DeviceUnavailable) as err:
        log.error("%s", err)  # an operator's problem: one line, exit 2
        sys.exit(2)


if __name__ == "__main__":
    main()
