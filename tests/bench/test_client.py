"""The benchmark clients against a real in-process gRPC server: plain load, and load across a
release switch (the numbers are not asserted, only that they are measured and complete), and a
service that cannot answer: the failure is reported in words and `reaseq bench` exits non-zero."""

import asyncio

import pytest
from typer.testing import CliRunner

from reaseq.bench.client import bench, bench_switch, format_report
from reaseq.cli import app
from reaseq.offline.publish import EmbeddedPublisher
from reaseq.service.grpc_server import build_grpc_server
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings

pytestmark = pytest.mark.anyio


async def test_bench_and_bench_switch(ranker, releases_dir, second_release, release_ids) -> None:
    server, port = build_grpc_server(ranker, "127.0.0.1", 0)
    await server.start()
    user, items = release_ids
    target = f"127.0.0.1:{port}"
    try:
        report = await bench(
            "grpc",
            target,
            [user],
            items,
            n_candidates=5,
            n_recent=3,
            requests=40,
            concurrency=4,
            warmup=5,
        )
        assert report["ok"] == 40 and report["errors"] == 0
        assert 0 < report["p50_ms"] <= report["p99_ms"]
        assert "p99" in format_report(report)

        def switch() -> None:
            EmbeddedPublisher(releases_dir).publish(second_release)

        before = ranker.active_versions()[0]
        stats = await bench_switch(
            target,
            [user],
            items,
            switch,
            duration_s=4.0,
            switch_at_s=1.0,
            n_candidates=5,
            n_recent=3,
            concurrency=2,
        )
        assert stats["errors"] == 0
        assert stats["releases_seen"] == sorted([before, "second-release"])
        assert stats["switch_window"]["n"] > 0 and stats["steady"]["n"] > 0
        with pytest.raises(ValueError, match="transport"):
            await bench("carrier-pigeon", target, [user], items, requests=1)
    finally:
        await server.stop(None)


async def test_bench_against_a_service_without_a_release_fails_with_its_reason(
    tmp_path, pipeline_run
) -> None:
    (tmp_path / "empty").mkdir()
    settings = ServiceSettings(store="embedded", releases_dir=tmp_path / "empty")
    ranker = await Ranker.open(settings, follow=False)
    assert not ranker.is_ready()
    server, port = build_grpc_server(ranker, "127.0.0.1", 0)
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        report = await bench(
            "grpc", target, ["u1"], ["i1", "i2"], n_candidates=2, n_recent=1, requests=5, warmup=0
        )
        assert report["ok"] == 0 and report["errors"] == 5
        assert report["first_error"].startswith("UNAVAILABLE: no release is loaded")

        args = ["bench", "--target", target, "--requests", "5", "--concurrency", "1"]
        ids = ["--ids-from", str(pipeline_run.release_dir)]
        # the command runs its own event loop, so it runs in a thread while this loop serves
        result = await asyncio.to_thread(CliRunner().invoke, app, [*args, *ids], terminal_width=400)
        assert result.exit_code == 1, result.output
        assert "error: 5 requests failed; first: UNAVAILABLE: no release is loaded" in (
            result.stderr
        )
    finally:
        await server.stop(None)
        await ranker.close()
