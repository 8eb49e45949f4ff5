"""What the floor and naive reference servers share: the HTTP side and the signal handling.

Both run their gRPC server and uvicorn in one process, as the service does, and stop on
SIGINT/SIGTERM so the matrix can end them like it ends the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

HOST = "127.0.0.1"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve_until_signal` owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_until_signal(app: FastAPI | None, host: str, http_port: int | None) -> None:
    """Serve `app` on `http_port` (none: no HTTP) until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stop_task = asyncio.create_task(stop.wait())
    if app is None or not http_port:
        await stop_task
        return
    config = uvicorn.Config(
        app, host=host, port=http_port, log_config=None, access_log=False, server_header=False
    )
    server = _Uvicorn(config)
    http_task = asyncio.create_task(server.serve())
    await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    server.should_exit = True
    await http_task  # a start-up failure (a taken port) is the process's failure


def port_args(description: str) -> argparse.ArgumentParser:
    """The command line every reference server takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (0: no HTTP)")
    return parser
