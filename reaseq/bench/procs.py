"""Server processes the matrix starts and measures: on free loopback ports, logs to files.

Output goes to files, never pipes (a full pipe would stall the server mid-benchmark), and a
process that dies or never gets ready is reported with the end of its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0  # the service loads and verifies a release (and pushes it to Triton)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass
class ServerProcess:
    """One server answering Rank on gRPC and HTTP; `ready_path` answers 200 once it can rank."""

    name: str
    command: list[str]
    logs: Path
    env: dict[str, str] = field(default_factory=dict)  # over os.environ
    drop_env_prefix: str | None = None  # inherited variables with this prefix are not passed
    ready_path: str = "/healthz"
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.name}.log"

    @property
    def targets(self) -> dict[str, str]:
        """What the bench client takes for each transport."""
        return {"grpc": f"{HOST}:{self.grpc_port}", "http": f"http://{HOST}:{self.http_port}"}

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
        self.logs.mkdir(parents=True, exist_ok=True)
        prefix = self.drop_env_prefix
        inherited = {k: v for k, v in os.environ.items() if not (prefix and k.startswith(prefix))}
        env = inherited | self.env
        with self.log_path.open("wb") as log:  # this run's log only
            self.proc = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.logs,  # no stray .env or reaseq.toml of the caller's directory
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{HOST}:{self.http_port}{self.ready_path}"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready; "
                    f"end of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.name} was not ready after {timeout_s:.0f} s; end of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisProcess:
    """A redis-server of our own on a free loopback port that persists to an append-only file in
    `workdir`, so a kill and a restart on the same port find the data again, as a real store's
    restart does (fsync every second: what was written a second before the kill survives)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout_s: float = 60.0) -> RedisProcess:
        """Start (or restart, on the same port) and wait until it answers PING, which it does
        only once the append-only file is loaded."""
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.workdir)]
        command += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        command += ["--protected-mode", "no"]
        with self.log_path.open("ab") as log:  # a restart appends to the same log
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.proc.returncode} on port {self.port}; "
                        f"end of {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                try:
                    if client.ping():
                        return self
                except redis.RedisError:  # not listening yet, or still loading its data
                    time.sleep(0.05)
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL: the crash of a store, not a shutdown (no final save)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def python_module(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter (the same virtual environment)."""
    return [sys.executable, "-m", module, *args]
