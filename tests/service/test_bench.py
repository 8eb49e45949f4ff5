"""The benchmark clients against a real in-process gRPC server: plain load, and load across a
release switch (the numbers are not asserted, only that they are measured and complete)."""

import pytest

from reaseq.offline.publish import EmbeddedPublisher
from reaseq.service.bench import bench, bench_switch, format_report
from reaseq.service.grpc_server import build_grpc_server

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
