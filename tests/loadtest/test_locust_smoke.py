"""CI smoke of the load test: the real server process over the pipeline's release, loaded for
30 s by locust (headless, HTTP and gRPC users together); any failed request fails the test.

Marked `e2e` (the whole pipeline's release and the real service; `make test-fast` skips it).
Locust runs as its own process, as a user runs it: its gevent monkey-patching must not reach
pytest, and this also checks the documented command line.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service.service_proc import ServiceProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
RUN_TIME_S = 30  # the CI run
USERS = 4  # two per class: locust splits users over the classes by weight (equal here)
MIN_REQUESTS_PER_CLASS = 100  # ~3 req/s: far below what 2 users send, yet proves the load ran


def _wait_ready(server: ServiceProcess, timeout_s: float = 60) -> None:
    """Until /readyz says a release is loaded (the ports answer before it is)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"no release loaded in {timeout_s} s: {server.stderr()}")


def _stats_rows(csv_prefix: Path) -> dict[str, dict[str, str]]:
    """Locust's `<prefix>_stats.csv` rows by request type (grpc, POST, "" = Aggregated)."""
    with (csv_prefix.parent / f"{csv_prefix.name}_stats.csv").open() as f:
        return {row["Type"]: row for row in csv.DictReader(f)}


TOKEN = "smoke-test-token-0123456789"


@pytest.mark.parametrize(
    ("run_time_s", "token"), [(RUN_TIME_S, ""), (10, TOKEN)], ids=["open", "token"]
)
def test_http_and_grpc_users_run_without_a_failure(
    releases_dir: Path, tmp_path: Path, run_time_s: int, token: str
) -> None:
    """The 30 s CI run on an open service, and a shorter one on a service that requires a bearer
    token, which both user classes send (`--token`)."""
    if importlib.util.find_spec("locust") is None:
        pytest.fail("locust is not installed: pip install -e '.[dev]'")
    env = {"REASEQ_AUTH_TOKENS": token} if token else None
    server = ServiceProcess(releases_dir, tmp_path / "logs", env=env).start()
    csv_prefix = tmp_path / "locust"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(USERS),
        "-r",
        str(USERS),
        "-t",
        f"{run_time_s}s",
        "--only-summary",
        "--exit-code-on-error",
        "1",
        "--csv",
        str(csv_prefix),
        "-H",
        server.base_url,
        "--grpc-target",
        f"127.0.0.1:{server.grpc_port}",
        "--release-dir",
        str(releases_dir),
        # more unknown ids and some explain calls than the defaults, so a short run covers them
        "--unknown-user-share",
        "0.2",
        "--unknown-item-share",
        "0.1",
        "--explain-share",
        "0.05",
        *(["--token", token] if token else []),
    ]
    try:
        server.wait_alive()
        _wait_ready(server)
        if token:  # auth is really on: the same request without the token is refused
            refused = httpx.post(f"{server.base_url}/v1/rank", json={}, timeout=5)
            assert refused.status_code == 401, refused.text
        run = subprocess.run(
            command,
            cwd=tmp_path,  # no locust.conf or pyproject [tool.locust] from the checkout
            capture_output=True,
            text=True,
            timeout=run_time_s + 60,
        )
    finally:
        server.stop()
    output = (run.stdout + run.stderr)[-6000:]
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert run.returncode == 0, f"locust exited {run.returncode}:\n{failures}\n{output}"
    rows = _stats_rows(csv_prefix)
    least = MIN_REQUESTS_PER_CLASS * run_time_s // RUN_TIME_S
    for kind in ("POST", "grpc"):
        assert kind in rows, f"no {kind} requests were made:\n{output}"
        assert int(rows[kind]["Failure Count"]) == 0, failures
        assert int(rows[kind]["Request Count"]) >= least, output
    assert int(rows[""]["Failure Count"]) == 0, failures
    print(output[-4000:])  # locust's summary (on stderr), for `pytest -rP`
