"""A real `python -m reaseq.service.server` process on free ports, for tests that need the
whole server (uvicorn's own HTTP handling, socket binding) rather than the app over ASGI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from reaseq.service.query import MAX_ID_LENGTH
from reaseq.service.settings import ServiceSettings
from tests.conftest import free_port


class ServiceProcess:
    """One server process; output goes to files (no pipe can fill up and stall it)."""

    def __init__(
        self,
        releases_dir: Path,
        logs: Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.releases_dir, self.logs = releases_dir, logs
        # the module entry point by default; `reaseq serve` (the CLI a user runs) when given
        self.command = command or [sys.executable, "-m", "reaseq.service.server"]
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logs / f"stdout-{self.http_port}-{self.grpc_port}.log"
        self.stderr_path = logs / f"stderr-{self.http_port}-{self.grpc_port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> ServiceProcess:
        env = {
            **os.environ,
            "REASEQ_STORE": "embedded",
            "REASEQ_RELEASES_DIR": str(self.releases_dir),
            "REASEQ_HOST": "127.0.0.1",
            "REASEQ_HTTP_PORT": str(self.http_port),
            "REASEQ_GRPC_PORT": str(self.grpc_port),
            "REASEQ_CONFIG": str(self.logs / "no-such-config.toml"),
            **self.extra_env,
        }
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.logs,  # no stray .env or reaseq.toml from the checkout
                stdout=out,
                stderr=err,
            )
        return self

    def wait_alive(self, timeout_s: float = 60) -> None:
        """Until /healthz answers; fails with the server's stderr if it exited instead."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not answer in {timeout_s} s: {self.stderr()}")

    def wait_exit(self, timeout_s: float = 60) -> int | None:
        """The exit code, or None if the process is still running after `timeout_s`."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def largest_valid_request(settings: ServiceSettings, user_id: str) -> bytes:
    """The biggest body the service must accept: every list full, every id 128 characters of
    the costliest JSON escape (a non-BMP character as a 12-byte surrogate-pair escape)."""
    widest = "\U0001f600" * MAX_ID_LENGTH
    payload = {
        "user_id": user_id,
        "candidate_item_ids": [widest] * settings.max_candidates,
        "recent_item_ids": [widest] * settings.max_recent_behaviors,
        "deadline_ms": 2**32 - 1,
    }
    return json.dumps(payload, indent=1).encode()  # ensure_ascii (default): every escape spelled


def scrape(proc: ServiceProcess, name: str) -> float:
    """One label-free sample (`reaseq_ready`, a Histogram's `_sum`) of the server's /metrics."""
    text = httpx.get(f"{proc.base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"{name} is not in /metrics")
