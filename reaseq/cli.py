"""`reaseq` command line: offline jobs, publishing, releases, the service and its benchmark.

Heavy imports (torch, sentence-transformers) happen inside the offline commands only, so `reaseq
serve` starts without them. Store settings default to the service's (`REASEQ_*` environment), so
the publisher and the service agree on where releases live.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from reaseq.service.settings import ServiceSettings

app = typer.Typer(
    help="ReaSeq Serving: offline jobs, releases and the ranking service.",
    pretty_exceptions_show_locals=False,
)
release_app = typer.Typer(help="List, activate and roll back releases.")
app.add_typer(release_app, name="release")
console = Console()

StoreOpt = Annotated[str | None, typer.Option(help="embedded | redis (default: $REASEQ_STORE)")]
ReleasesDirOpt = Annotated[Path | None, typer.Option(help="embedded store folder")]
RedisUrlOpt = Annotated[str | None, typer.Option(help="Redis URL (default: $REASEQ_REDIS_URL)")]
KeepOpt = Annotated[int, typer.Option(help="releases kept; older ones are garbage-collected")]


def _settings(
    store: str | None, releases_dir: Path | None, redis_url: str | None
) -> ServiceSettings:
    overrides = {"store": store, "releases_dir": releases_dir, "redis_url": redis_url}
    return ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Expected failures (bad release, missing file, store down) as one red line, exit code 2."""
    import redis

    from reaseq.core.release import ReleaseCheckError

    try:
        yield
    except (ReleaseCheckError, FileNotFoundError, ValueError, redis.RedisError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None


def _publisher(
    settings: ServiceSettings, verbose: bool = False, batch_size: int = 500, pause_ms: int = 0
):
    from reaseq.core.keys import KeySchema
    from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher

    if settings.store == "redis":
        import redis

        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        client = redis.Redis.from_url(settings.redis_url, password=password, socket_timeout=10)
        keys = KeySchema(settings.redis_namespace)
        return RedisPublisher(client, keys, _step(verbose, pause_ms), batch_size)
    return EmbeddedPublisher(settings.releases_dir, _step(verbose, pause_ms))


def _step(verbose: bool, pause_ms: int):
    """After each publish step: print it (flushed) if verbose, then pause if asked (throttles
    writes into a busy production store; tests use it to stop a publisher at a chosen step)."""
    import time

    def step(msg: str) -> None:
        if verbose:
            print(f"publish: {msg}", flush=True)
        if pause_ms:
            time.sleep(pause_ms / 1000)

    return step


@app.command()
def pipeline(
    dataset: Annotated[
        str, typer.Argument(help="synthetic | scientific | office | ml-100k | PATH")
    ],
    features: Annotated[
        list[str] | None, typer.Option(help="feature sets to train [default: id, id+text]")
    ] = None,
    export_features: Annotated[
        str | None, typer.Option(help="feature set exported as release [default: id+text]")
    ] = None,
    artifacts: Annotated[Path | None, typer.Option(help="artifacts folder [artifacts]")] = None,
    epochs: Annotated[int | None, typer.Option(help="max epochs (early stop on val) [20]")] = None,
    max_behaviors: Annotated[int | None, typer.Option(help="behaviors per sample [100]")] = None,
    attention: Annotated[str | None, typer.Option(help="dot | din [dot]")] = None,
    publish: Annotated[bool, typer.Option(help="publish the exported release")] = True,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    keep: KeepOpt = 3,
    config: Annotated[Path | None, typer.Option(help="TOML file; options given here win")] = None,
) -> None:
    """Prepare, encode, train each feature set, report AUC/GAUC/LogLoss, export and publish."""
    from reaseq.offline.pipeline import (
        PipelineConfig,
        load_pipeline_config,
        resolve_dataset,
        run_pipeline,
    )

    cfg = load_pipeline_config(config) if config else PipelineConfig()
    cfg.dataset = dataset
    overrides = [
        (cfg, "features", tuple(features) if features else None),
        (cfg, "export_features", export_features),
        (cfg, "artifacts_dir", artifacts),
        (cfg.train, "epochs", epochs),
        (cfg.train.ranker, "max_behaviors", max_behaviors),
        (cfg.train.ranker, "attention", attention),
    ]
    for target, name, value in overrides:
        if value is not None:
            setattr(target, name, value)
    if dataset != "synthetic":
        with _clear_errors():  # an unknown dataset is a clear error before any work starts
            resolve_dataset(dataset, cfg.artifacts_dir)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        result = run_pipeline(cfg, log=console.log, progress=progress)
    console.print((result.work_dir / "report.md").read_text())
    if publish and result.release_dir is not None:
        settings = _settings(store, releases_dir, redis_url)
        with _clear_errors():
            release = _publisher(settings).publish(result.release_dir, activate=True, keep=keep)
        console.print(f"published and activated release [bold]{release}[/] ({settings.store})")


@app.command("export")
def export_cmd(
    dataset: Annotated[str, typer.Argument(help="dataset name under the artifacts folder")],
    features: Annotated[str, typer.Option(help="which trained model: id | id+text")] = "id+text",
    artifacts: Annotated[Path, typer.Option(help="artifacts folder")] = Path("artifacts"),
) -> None:
    """Export a trained ranker as a new release folder (ONNX + feature snapshot), parity-checked."""
    from reaseq.offline.export import export_release
    from reaseq.offline.pipeline import load_prepared
    from reaseq.offline.train import CHECKPOINT_FILE, load_checkpoint

    work = artifacts / dataset
    with _clear_errors():
        model, ckpt = load_checkpoint(work / "models" / features / CHECKPOINT_FILE)
        data = load_prepared(work)
    test = ckpt["metrics"]["test"]
    metrics = {f"test_{k}": v for k, v in test.items() if k != "n"}
    folder = export_release(model, data, work / "exports", features, metrics)
    parity = json.loads((folder / "manifest.json").read_text())["metrics"]
    console.print(f"exported {folder} (ONNX parity {parity['onnx_parity_max_abs_diff']:.1e})")


@app.command("publish")
def publish_cmd(
    release_dir: Annotated[Path, typer.Argument(help="an exported release folder")],
    activate: Annotated[bool, typer.Option(help="switch the active pointer to it")] = True,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    keep: KeepOpt = 3,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="print each step")] = False,
    batch_size: Annotated[int, typer.Option(help="Redis: keys per pipelined write")] = 500,
    pause_ms: Annotated[int, typer.Option(help="pause after each step (throttle)")] = 0,
) -> None:
    """Write a release to the store, verify it, then switch the active pointer atomically."""
    settings = _settings(store, releases_dir, redis_url)
    with _clear_errors():
        publisher = _publisher(settings, verbose, batch_size, pause_ms)
        release = publisher.publish(release_dir, activate=activate, keep=keep)
    console.print(f"published release [bold]{release}[/] to {settings.store}")


@release_app.command("list")
def release_list(
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per release")] = False,
) -> None:
    """Complete releases, oldest first; the active one is marked."""
    from dataclasses import asdict

    from reaseq.offline.publish import describe

    with _clear_errors():
        infos = describe(_publisher(_settings(store, releases_dir, redis_url)))
    if as_json:
        for info in infos:
            print(json.dumps(asdict(info)))
        return
    table = Table("active", "release", "created", "model version", "feature version")
    for info in infos:
        table.add_row(
            "*" if info.active else "",
            info.release,
            info.created_at,
            info.model_version,
            info.feature_version,
        )
    console.print(table)


@release_app.command("activate")
def release_activate(
    release: str,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Point the service at a kept release (it switches on its next pointer check)."""
    with _clear_errors():
        _publisher(_settings(store, releases_dir, redis_url)).activate(release)
    console.print(f"active release: [bold]{release}[/]")


@release_app.command("rollback")
def release_rollback(
    store: StoreOpt = None, releases_dir: ReleasesDirOpt = None, redis_url: RedisUrlOpt = None
) -> None:
    """Re-activate the most recent previously active release that is still kept."""
    from reaseq.offline.publish import rollback_target

    with _clear_errors():
        publisher = _publisher(_settings(store, releases_dir, redis_url))
        available = {m.release for m in publisher.complete()}
        target = rollback_target(publisher.history(), publisher.active(), available)
        publisher.activate(target)
    console.print(f"rolled back to [bold]{target}[/]")


@app.command()
def serve(
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    http_port: Annotated[int | None, typer.Option()] = None,
    grpc_port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Run the gRPC and HTTP ranking service (settings from REASEQ_* environment)."""
    from reaseq.service.server import serve as run_server

    settings = _settings(store, releases_dir, redis_url)
    if http_port is not None:
        settings.http_port = http_port
    if grpc_port is not None:
        settings.grpc_port = grpc_port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_server(settings))


@app.command()
def demo(
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve")] = True,
) -> None:
    """The whole path on a small synthetic sample: train, export, publish, serve."""
    pipeline(
        "synthetic",
        publish=True,
        store=store,
        releases_dir=releases_dir,
        redis_url=redis_url,
        keep=3,
    )
    if serve_after:
        serve(store=store, releases_dir=releases_dir, redis_url=redis_url)


@app.command()
def bench(
    target: Annotated[
        str, typer.Option(help="gRPC host:port or HTTP base URL")
    ] = "127.0.0.1:50051",
    transport: Annotated[str, typer.Option(help="grpc | http")] = "grpc",
    candidates: Annotated[int, typer.Option()] = 200,
    recent: Annotated[int, typer.Option(help="real-time behaviors sent per request")] = 100,
    requests: Annotated[int, typer.Option()] = 2000,
    concurrency: Annotated[int, typer.Option()] = 8,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """p50/p99 latency and throughput of Rank against a running service (ids from the active
    release, so every candidate and behavior is a real item)."""
    from reaseq.service.bench import bench as run_bench
    from reaseq.service.bench import format_report

    user_ids, item_ids = _release_ids(_settings(store, releases_dir, redis_url))
    stats = asyncio.run(
        run_bench(
            transport,
            target,
            user_ids,
            item_ids,
            n_candidates=candidates,
            n_recent=recent,
            requests=requests,
            concurrency=concurrency,
        )
    )
    console.print(format_report(stats))
    print(json.dumps(stats))


@app.command("bench-switch")
def bench_switch_cmd(
    to: Annotated[str | None, typer.Option(help="release to switch to (default: rollback)")] = None,
    target: Annotated[str, typer.Option(help="gRPC host:port")] = "127.0.0.1:50051",
    duration: Annotated[float, typer.Option(help="seconds of load")] = 20.0,
    switch_at: Annotated[float, typer.Option(help="seconds into the load")] = 10.0,
    candidates: Annotated[int, typer.Option()] = 200,
    recent: Annotated[int, typer.Option()] = 100,
    concurrency: Annotated[int, typer.Option()] = 8,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """p50/p99 of gRPC Rank in steady state vs while the service switches release under load."""
    from reaseq.offline.publish import rollback_target
    from reaseq.service.bench import bench_switch

    settings = _settings(store, releases_dir, redis_url)
    publisher = _publisher(settings)
    user_ids, item_ids = _release_ids(settings)
    if to is None:
        available = {m.release for m in publisher.complete()}
        to = rollback_target(publisher.history(), publisher.active(), available)
    stats = asyncio.run(
        bench_switch(
            target,
            user_ids,
            item_ids,
            lambda: publisher.activate(to),
            duration_s=duration,
            switch_at_s=switch_at,
            n_candidates=candidates,
            n_recent=recent,
            concurrency=concurrency,
        )
    )
    console.print_json(json.dumps(stats))


def _release_ids(settings: ServiceSettings) -> tuple[list[str], list[str]]:
    from reaseq.core.release import Snapshot

    publisher = _publisher(settings)
    active = publisher.active()
    if active is None:
        raise typer.BadParameter("no active release: run `reaseq pipeline` first")
    if settings.store == "embedded":
        snap = Snapshot.open(settings.releases_dir / active)
        return snap.user_ids.tolist(), snap.item_ids.tolist()
    prefix = publisher.keys.prefix(active)
    users, items = [], []
    for key in publisher.client.scan_iter(match=prefix + "*", count=5000):
        kind, _, ident = key.decode()[len(prefix) :].partition(":")
        (users if kind == "user" else items if kind == "item" else []).append(ident)
    return users, items


if __name__ == "__main__":
    app()
