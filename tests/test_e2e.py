"""End to end: the pipeline's release served by the real `reaseq serve` process; gRPC and HTTP
return the same scores, and the process shuts down cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import httpx
import pytest

from reaseq.v1 import ranking_pb2, ranking_pb2_grpc
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_served_scores_match_over_grpc_and_http(
    store, releases_dir, release_ids, redis_server, pipeline_run, tmp_path
) -> None:
    env = os.environ | {
        "REASEQ_STORE": store,
        "REASEQ_RELEASES_DIR": str(releases_dir),
        "REASEQ_REDIS_URL": redis_server.url,
        "REASEQ_REDIS_NAMESPACE": "e2e",
    }
    if store == "redis":
        subprocess.run(
            [sys.executable, "-m", "reaseq.cli", "publish", str(pipeline_run.release_dir)],
            env=env,
            check=True,
            capture_output=True,
        )
    http_port, grpc_port = free_port(), free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reaseq.cli",
            "serve",
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("service did not become ready:\n" + (tmp_path / "serve.log").read_text())

        user, items = release_ids
        body = {"user_id": user, "candidate_item_ids": items, "recent_item_ids": items[:2]}
        http_reply = httpx.post(f"{base}/v1/rank", json=body, timeout=10).json()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc_reply = ranking_pb2_grpc.RankingServiceStub(channel).Rank(
                ranking_pb2.RankRequest(**body), timeout=10
            )
        assert len(http_reply["scores"]) == len(items)
        assert http_reply["scores"] == list(grpc_reply.scores)
        assert http_reply["release"] == grpc_reply.release != ""
        assert http_reply["model_version"] == grpc_reply.model_version
        bad = httpx.post(f"{base}/v1/rank", json=body | {"candidate_item_ids": []}, timeout=10)
        assert bad.status_code == 400 and "candidate" in bad.json()["message"]
        assert "reaseq_requests_total" in httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "serve.log").read_text()
