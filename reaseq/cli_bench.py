"""`reaseq bench-matrix`: the service's backends x transports x sizes x concurrency, beside the
floor (transport alone) and the naive path (PyTorch eager, dict lookups), into a report.

The matrix starts everything it measures itself, so it needs a release folder only (and, for the
naive path, the checkpoint the release was exported from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"{what}: comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("REASEQ_"):
            raise typer.BadParameter(f"--service-env takes REASEQ_NAME=value, got {pair!r}")
        env[key] = value
    return env


def bench_matrix(
    release: Annotated[
        Path, typer.Option(help="release folder (exported or published) to serve and measure")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="the naive path's training checkpoint (ranker.pt the release was exported from)",
            show_default="<work>/models/<features>/ranker.pt beside the release's exports/, "
            "else artifacts/<dataset>/models/<features>/ranker.pt",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="report folder: matrix.json, matrix.md, matrix.png, logs/")
    ] = Path("artifacts/bench"),
    backends: Annotated[str, typer.Option(help="service backends: local,triton ('' none)")] = (
        "local,triton"
    ),
    transports: Annotated[str, typer.Option(help="grpc,http")] = "grpc,http",
    candidates: Annotated[str, typer.Option(help="candidates per request")] = "50,200,1000",
    behaviors: Annotated[str, typer.Option(help="recent_item_ids per request")] = "50,100",
    concurrency: Annotated[str, typer.Option(help="requests in flight")] = "1,8,32",
    requests: Annotated[int, typer.Option(help="timed requests per cell, at most")] = 400,
    max_seconds: Annotated[float, typer.Option(help="cap on one cell's timed phase")] = 5.0,
    warmup: Annotated[int, typer.Option(help="untimed requests before each cell")] = 20,
    floor: Annotated[bool, typer.Option("--floor/--no-floor", help="measure the floor")] = True,
    naive: Annotated[
        bool, typer.Option("--naive/--no-naive", help="measure the naive path")
    ] = True,
    naive_threads: Annotated[int, typer.Option(help="torch threads of the naive path")] = 1,
    store: Annotated[str, typer.Option(help="the service's store: embedded | redis")] = (
        "embedded"
    ),
    redis_url: Annotated[str, typer.Option(help="with --store redis")] = (
        "redis://127.0.0.1:6379/0"
    ),
    redis_namespace: Annotated[
        str, typer.Option(help="with --store redis: a namespace of the benchmark's own")
    ] = "reaseq-bench",
    service_env: Annotated[
        list[str] | None,
        typer.Option(
            help="REASEQ_NAME=value for the service (repeatable), e.g. REASEQ_BATCH_MAX_SIZE=1",
            show_default="none: the service's defaults",
        ),
    ] = None,
) -> None:
    """Benchmark matrix: the service (local, triton) over gRPC and HTTP at each size and
    concurrency, with the floor and the naive path measured on the same cells. Writes a report
    (JSON, Markdown, PNG) and exits 1 if any request failed."""
    from reaseq.bench import report as reports
    from reaseq.bench.matrix import MatrixConfig, run_matrix

    try:
        cfg = MatrixConfig(
            release=release,
            out=out,
            checkpoint=checkpoint,
            backends=_names(backends),
            transports=_names(transports),
            candidates=_ints(candidates, "--candidates"),
            behaviors=_ints(behaviors, "--behaviors"),
            concurrency=_ints(concurrency, "--concurrency"),
            requests=requests,
            max_seconds=max_seconds,
            warmup=warmup,
            floor=floor,
            naive=naive,
            naive_threads=naive_threads,
            store=store,  # type: ignore[arg-type]  # checked by MatrixConfig
            redis_url=redis_url,
            redis_namespace=redis_namespace,
            service_env=_env_pairs(service_env or []),
        )
        report = run_matrix(
            cfg, log=lambda line: console.print(line, highlight=False, soft_wrap=True)
        )
    except (ValueError, RuntimeError) as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    paths = reports.write(report, out)
    console.print(reports.rich_table(report), width=max(console.width, 120))  # never truncated
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False)
    failed = [row for row in report["cells"] if row["errors"]]
    if failed:
        first = failed[0]
        err_console.print(
            f"[red]error:[/] {len(failed)} cells had failed requests; first: {first['system']} "
            f"{first['transport']}: {escape(str(first['first_error']))}",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def bench_model(
    release: Annotated[Path, typer.Option(help="release folder whose model.onnx to time")],
    device: Annotated[str, typer.Option(help="cpu | cuda (needs onnxruntime-gpu)")] = "cpu",
    requests_per_call: Annotated[
        str, typer.Option(help="requests merged into one model call")
    ] = "1,16,256",
    candidates: Annotated[int, typer.Option(help="candidates per request")] = 200,
    behaviors: Annotated[int, typer.Option(help="behaviors per request")] = 100,
    seconds: Annotated[float, typer.Option(help="timed seconds per row")] = 2.0,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads")] = 1,
) -> None:
    """Model-only throughput (no transport, no features): candidates/s of the release's model in
    the service's ONNX Runtime backend, per requests-per-call."""
    from reaseq.bench.model import bench_model as run
    from reaseq.service.errors import DeviceUnavailable

    try:
        rows = run(
            release,
            device,
            _ints(requests_per_call, "--requests-per-call"),
            candidates,
            behaviors,
            seconds,
            threads,
        )
    except (DeviceUnavailable, FileNotFoundError) as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    for row in rows:
        console.print(row.line(), markup=False)


def bench_store(
    release: Annotated[Path, typer.Option(help="release folder (exported) to publish and read")],
    requests: Annotated[int, typer.Option(help="timed requests per store")] = 2000,
    candidates: Annotated[int, typer.Option(help="candidates per request")] = 200,
    warmup: Annotated[int, typer.Option(help="untimed requests first")] = 200,
    single_url: Annotated[
        str | None, typer.Option(help="a single-node Redis to use", show_default="one started here")
    ] = None,
    cluster_url: Annotated[
        str | None,
        typer.Option(
            help="a Redis Cluster to use (redis-cluster://host:port,...)",
            show_default="3 masters started here",
        ),
    ] = None,
) -> None:
    """Feature reads of one request on single-node Redis vs a Redis Cluster: the release is
    published to both, then each request goes through the service's RedisFeatures.fetch on
    each store in turn (namespace `bench-store`); p50/p95 per store and the ratio."""
    import redis

    from reaseq.bench.store import bench_store as run
    from reaseq.core.release import ReleaseCheckError
    from reaseq.service.errors import ReaseqError

    try:
        report = run(
            release,
            requests,
            candidates,
            warmup,
            single_url,
            cluster_url,
            log=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
        )
    except (
        ReleaseCheckError,
        ReaseqError,  # a store that fails mid-run: FeatureStoreUnavailable, CorruptFeatures
        FileNotFoundError,
        RuntimeError,
        ValueError,
        redis.RedisError,
        redis.RedisClusterException,
    ) as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    for line in report.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def soak(
    export_dir: Annotated[Path, typer.Argument(help="exported release folder: release A")],
    second: Annotated[
        Path | None,
        typer.Option(
            help="exported release folder switched to mid-run: release B",
            show_default="a copy of EXPORT_DIR under a new release id",
        ),
    ] = None,
    duration: Annotated[str, typer.Option(help="length of the load: 600, 90s, 10m")] = "10m",
    concurrency: Annotated[
        int, typer.Option(help="requests in flight, half gRPC and half HTTP")
    ] = 8,
    out: Annotated[
        Path,
        typer.Option(help="report folder: soak.json, soak.md, requests.csv, server.csv, logs/"),
    ] = Path("artifacts/soak"),
    outage: Annotated[str, typer.Option(help="how long redis-server stays killed")] = "5s",
    think_ms: Annotated[
        float, typer.Option(help="pause after each answer, uniform 0..N ms (0: closed loop)")
    ] = 0.0,
    candidates: Annotated[int, typer.Option(help="candidate items per request")] = 50,
    switch_grace: Annotated[
        str, typer.Option(help="the switch window ends this long after B is first served")
    ] = "2s",
    recovery_grace: Annotated[
        str, typer.Option(help="the outage window ends this long after Redis is back")
    ] = "5s",
    max_outside_errors: Annotated[
        int, typer.Option(help="errors outside the fault windows allowed")
    ] = 0,
    max_rss_growth: Annotated[
        float, typer.Option(help="server RSS growth allowed, percent (first vs last window)")
    ] = 5.0,
    seed: Annotated[int, typer.Option(help="random seed of the traffic")] = 0,
    service_env: Annotated[
        list[str] | None,
        typer.Option(
            help="REASEQ_NAME=value for the service (repeatable), e.g. REASEQ_REDIS_TIMEOUT_S=0.5",
            show_default="none: the service's defaults",
        ),
    ] = None,
) -> None:
    """Soak: mixed gRPC + HTTP load on `reaseq serve --store redis` with a release switch at 1/3
    and a Redis kill + restart at 2/3; every request and the server's RSS recorded. Exits 1 if
    any request failed outside the fault windows, an error inside them was not UNAVAILABLE /
    HTTP 503, release B was never served, or RSS grew by the limit or more."""
    from reaseq.bench import soak_report
    from reaseq.bench.soak import Soak, SoakConfig, analyse, parse_duration, write_records
    from reaseq.bench.workload import TrafficConfig
    from reaseq.core.release import ReleaseCheckError

    try:
        cfg = SoakConfig(
            export_a=export_dir,
            export_b=second,
            out=out,
            duration_s=parse_duration(duration),
            concurrency=concurrency,
            think_ms=think_ms,
            outage_s=parse_duration(outage),
            switch_grace_s=parse_duration(switch_grace),
            recovery_grace_s=parse_duration(recovery_grace),
            max_outside_errors=max_outside_errors,
            max_rss_growth_pct=max_rss_growth,
            traffic=TrafficConfig(candidates=candidates, seed=seed),
            service_env=_env_pairs(service_env or []),
        )
        run, release_a, release_b = Soak(
            cfg, log=lambda line: console.print(line, highlight=False, soft_wrap=True)
        ).run()
    except (ValueError, RuntimeError, ReleaseCheckError, FileNotFoundError) as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    report = analyse(cfg, run, release_a, release_b)
    paths = soak_report.write(report, out) + write_records(run, out)
    wide = Console(width=max(console.width, 140))  # print(width=) cannot exceed the console's
    wide.print(soak_report.rich_table(report))
    for line in soak_report.headline(report):
        console.print(escape(line), highlight=False, soft_wrap=True)
    console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False, soft_wrap=True)
    if not report["passed"]:
        raise typer.Exit(1)
