"""`reaseq bench-store`: it starts a single node and a 3-master cluster itself, publishes one
release to both, checks that both answer every request alike and prints p50/p95 and the ratios;
or it takes the stores' URLs."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from reaseq.bench.store import bench_store
from reaseq.cli import app
from tests.core.tiny_release import tiny_release


def test_bench_store_times_both_stores_it_started(tmp_path) -> None:
    release = tiny_release(tmp_path / "exports", "bench-release", value_format=2, n_items=300)
    args = ["bench-store", "--release", str(release), "--requests", "40", "--warmup", "5"]
    result = CliRunner().invoke(app, [*args, "--candidates", "200"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "and a 3-master cluster redis-cluster://127.0.0.1:" in result.output
    for store in ("single", "cluster", "cluster, per slot"):
        assert re.search(rf"^{re.escape(store)} +p50 +[\d.]+ ms +p95", result.output, re.M)
    assert re.search(r"^cluster / single: p50 [\d.]+x  p95 [\d.]+x$", result.output, re.M)


def test_bench_store_uses_the_stores_it_is_given(
    tmp_path, redis_client, redis_server, redis_cluster_client, redis_cluster
) -> None:
    release = tiny_release(tmp_path / "exports", "given-release", value_format=1)
    report = bench_store(
        release,
        requests_n=10,
        candidates=20,
        warmup=2,
        single_url=redis_server.url,
        cluster_url=redis_cluster.url,
        log=lambda _line: None,
    )
    assert [len(t.fetch_ms) for t in (report.single, report.cluster, report.per_slot)] == [10] * 3
    assert report.candidates == 20 and report.release == "given-release"
