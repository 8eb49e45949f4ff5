"""`reaseq` command line: offline jobs, publishing, releases, the service and its benchmark.

Heavy imports (torch, sentence-transformers) happen inside the offline commands only, so `reaseq
serve` starts without them. Store settings default to the service's (`REASEQ_*` environment), so
the publisher and the service agree on where releases live.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from reaseq.cli_bench import bench_matrix, bench_model, bench_store, soak
from reaseq.cli_experiment import experiment
from reaseq.cli_gbr import gbr_app
from reaseq.cli_makr import makr_app
from reaseq.cli_triton import triton_app
from reaseq.service.settings import ServiceSettings

app = typer.Typer(
    help="ReaSeq Serving: offline jobs, releases and the ranking service.",
    pretty_exceptions_show_locals=False,
)
release_app = typer.Typer(help="List, activate and roll back releases.")
app.add_typer(release_app, name="release")
app.add_typer(makr_app, name="makr")
app.add_typer(gbr_app, name="gbr")
app.add_typer(triton_app, name="triton")
app.command("bench-matrix")(bench_matrix)
app.command("bench-model")(bench_model)
app.command("bench-store")(bench_store)
app.command("experiment")(experiment)
app.command("soak")(soak)
console = Console()
err_console = Console(stderr=True)  # errors and "which store" lines: stdout stays parseable

StoreOpt = Annotated[
    str | None,
    typer.Option(
        help="release store: embedded | redis", show_default="$REASEQ_STORE, else embedded"
    ),
]
ReleasesDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="embedded store folder, relative to the current directory",
        show_default="$REASEQ_RELEASES_DIR, else artifacts/releases",
    ),
]
RedisUrlOpt = Annotated[
    str | None,
    typer.Option(
        help="Redis store URL; redis-cluster://host:port,host:port for a Redis Cluster (key "
        "namespace: $REASEQ_REDIS_NAMESPACE, else reaseq)",
        show_default="$REASEQ_REDIS_URL, else redis://127.0.0.1:6379/0",
    ),
]
KeepOpt = Annotated[int, typer.Option(help="releases kept; older ones are garbage-collected")]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="REASEQ_TOKEN",
        help="bearer token for a service with auth_tokens (from the environment, it stays out "
        "of ps and shell history)",
        show_default="none: the service's auth is off",
    ),
]
TlsCaOpt = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        readable=True,
        help="CA certificate (PEM) that signed the service's certificate: gRPC over TLS "
        "(HTTP: an https:// target's CA)",
        show_default="none: plaintext",
    ),
]


class CliError(Exception):
    """A user-facing problem with a clear fix: printed as one red line, exit code 2."""


def _settings(
    store: str | None, releases_dir: Path | None, redis_url: str | None
) -> ServiceSettings:
    overrides = {"store": store, "releases_dir": releases_dir, "redis_url": redis_url}
    return ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})


def _redact(url: str) -> str:
    """A Redis URL safe to print: the password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _store_label(settings: ServiceSettings) -> str:
    """Where releases are read and written, absolute, so no command depends silently on the
    current directory or environment: the embedded folder, or the Redis URL and namespace."""
    if settings.store == "redis":
        return f"redis {_redact(settings.redis_url)} namespace {settings.redis_namespace}"
    return f"embedded {settings.releases_dir.resolve()}"


def _existing_store(settings: ServiceSettings) -> None:
    """Read-only commands refuse a missing embedded folder instead of creating an empty one."""
    if settings.store == "embedded" and not settings.releases_dir.is_dir():
        raise CliError(
            f"no release store at {settings.releases_dir.resolve()}: run from the folder where "
            "`reaseq pipeline` published, or set --releases-dir / $REASEQ_RELEASES_DIR"
        )


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Expected failures (bad release, missing file, store down) as one red line, exit code 2."""
    import redis

    from reaseq.core.release import ReleaseCheckError
    from reaseq.service.errors import CannotBind, DeviceUnavailable

    expected = (
        CliError,
        ReleaseCheckError,
        CannotBind,
        DeviceUnavailable,
        FileNotFoundError,
        ValueError,
    )
    try:
        yield
    except (*expected, redis.RedisError, redis.RedisClusterException) as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _publisher(
    settings: ServiceSettings, verbose: bool = False, batch_size: int = 500, pause_ms: int = 0
):
    from reaseq.core.redis_cluster import key_schema, sync_client
    from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher

    if settings.store == "redis":
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        client = sync_client(settings.redis_url, password, timeout_s=10)
        keys = key_schema(settings.redis_namespace, settings.redis_url)
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
        str,
        typer.Argument(
            help="synthetic | scientific | office | ml-100k (names under $REASEQ_SHARED_DATA, "
            "default ../shared/data) | a dataset folder or file"
        ),
    ],
    features: Annotated[
        list[str] | None,
        typer.Option(help="feature sets to train, repeatable", show_default="id, id+text"),
    ] = None,
    export_features: Annotated[
        str | None, typer.Option(help="feature set exported as the release", show_default="id+text")
    ] = None,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="artifacts folder, relative to the current directory", show_default="artifacts"
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="max epochs, early stop on validation AUC", show_default="20")
    ] = None,
    max_behaviors: Annotated[
        int | None, typer.Option(help="behaviors per sample", show_default="100")
    ] = None,
    attention: Annotated[
        str | None, typer.Option(help="target attention: dot | din", show_default="dot")
    ] = None,
    makr_generate: Annotated[
        bool,
        typer.Option(
            help="id+makr / id+hybrid: generate missing MAKR knowledge with the embedded model "
            "(else those items are encoded from their raw text)"
        ),
    ] = True,
    publish: Annotated[
        bool, typer.Option(help="publish the exported release to the store and activate it")
    ] = True,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    keep: KeepOpt = 3,
    config: Annotated[
        Path | None,
        typer.Option(help="pipeline TOML file; options given here win", show_default="none"),
    ] = None,
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
        (cfg.makr, "generate", None if makr_generate else False),
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
    from reaseq.offline.makr.job import ShippedKnowledgeError
    from reaseq.offline.makr.llm import LLMError

    try:
        with Progress(*columns, console=console, transient=True) as progress:
            result = run_pipeline(cfg, log=console.log, progress=progress)
    except (ShippedKnowledgeError, LLMError) as err:  # MAKR knowledge for id+makr / id+hybrid
        err_console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print((result.work_dir / "report.md").read_text())
    if publish and result.release_dir is not None:
        settings = _settings(store, releases_dir, redis_url)
        with _clear_errors():
            release = _publisher(settings).publish(result.release_dir, activate=True, keep=keep)
        console.print(
            f"published and activated release [bold]{release}[/] ({_store_label(settings)})",
            soft_wrap=True,
        )


@app.command("export")
def export_cmd(
    dataset: Annotated[str, typer.Argument(help="dataset name under the artifacts folder")],
    features: Annotated[
        str, typer.Option(help="which trained model: id | id+<kind> | id+<kind>+gbr")
    ] = "id+text",
    artifacts: Annotated[
        Path, typer.Option(help="artifacts folder, relative to the current directory")
    ] = Path("artifacts"),
) -> None:
    """Export a trained ranker as a new release folder (ONNX + feature snapshot), parity-checked."""
    from reaseq.offline.export import export_release
    from reaseq.offline.makr.job import knowledge_summaries
    from reaseq.offline.pipeline import load_prepared, saved_histories
    from reaseq.offline.train import CHECKPOINT_FILE, load_checkpoint

    work = artifacts / dataset
    with _clear_errors():
        model, ckpt = load_checkpoint(work / "models" / features / CHECKPOINT_FILE)
        data = load_prepared(work)
        histories = saved_histories(work, features, log=err_console.print)
    test = ckpt["metrics"]["test"]
    metrics = {f"test_{k}": v for k, v in test.items() if k != "n"}
    knowledge = knowledge_summaries(work)
    folder = export_release(
        model, data, work / "exports", features, metrics, histories=histories, knowledge=knowledge
    )
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
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="print each step", show_default="off")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Redis: keys per pipelined write")] = 500,
    pause_ms: Annotated[int, typer.Option(help="pause after each step, ms (throttle)")] = 0,
) -> None:
    """Write a release to the store, verify it, then switch the active pointer atomically."""
    settings = _settings(store, releases_dir, redis_url)
    with _clear_errors():
        publisher = _publisher(settings, verbose, batch_size, pause_ms)
        release = publisher.publish(release_dir, activate=activate, keep=keep)
    console.print(
        f"published release [bold]{release}[/] to {_store_label(settings)}",
        soft_wrap=True,
    )


def _open_store(store: str | None, releases_dir: Path | None, redis_url: str | None):
    """The publisher of an existing store, after saying on stderr which store it is."""
    settings = _settings(store, releases_dir, redis_url)
    err_console.print(f"store: {_store_label(settings)}", soft_wrap=True, highlight=False)
    _existing_store(settings)
    return _publisher(settings)


@release_app.command("list")
def release_list(
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="one JSON object per release, on stdout", show_default="off"),
    ] = False,
) -> None:
    """Complete releases, oldest first; the active one is marked *. Says which store it read."""
    from dataclasses import asdict

    from reaseq.offline.publish import describe

    with _clear_errors():
        infos = describe(_open_store(store, releases_dir, redis_url))
    if as_json:
        for info in infos:
            print(json.dumps(asdict(info)))
        return
    if not infos:
        console.print("no complete releases in this store")
        return
    for info in infos:  # plain lines, never a table: ids are not cut off in a narrow terminal
        mark = "*" if info.active else " "
        if info.problem:
            print(f"{mark} {info.release}  unreadable: {info.problem}")
            continue
        print(
            f"{mark} {info.release}  model {info.model_version}  "
            f"features {info.feature_version}  created {info.created_at}"
        )


@release_app.command("activate")
def release_activate(
    release: Annotated[str, typer.Argument(help="id of a kept release (see `release list`)")],
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Point the service at a kept release (it switches on its next pointer check)."""
    with _clear_errors():
        _open_store(store, releases_dir, redis_url).activate(release)
    console.print(f"active release: [bold]{release}[/]")


@release_app.command("rollback")
def release_rollback(
    store: StoreOpt = None, releases_dir: ReleasesDirOpt = None, redis_url: RedisUrlOpt = None
) -> None:
    """Re-activate the most recent previously active release that is still kept."""
    from reaseq.offline.publish import rollback_target

    with _clear_errors():
        publisher = _open_store(store, releases_dir, redis_url)
        available = {m.release for m in publisher.complete()}
        target = rollback_target(publisher.history(), publisher.active(), available)
        publisher.activate(target)
    console.print(f"rolled back to [bold]{target}[/]")


@app.command()
def serve(
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port", show_default="$REASEQ_HTTP_PORT, else 8000")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port", show_default="$REASEQ_GRPC_PORT, else 50051")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="model backend: local (in-process ONNX Runtime) | triton",
            show_default="$REASEQ_BACKEND, else local",
        ),
    ] = None,
    triton_url: Annotated[
        str | None,
        typer.Option(help="Triton gRPC host:port", show_default="$REASEQ_TRITON_URL"),
    ] = None,
) -> None:
    """Run the gRPC and HTTP ranking service (settings from REASEQ_* environment)."""
    from reaseq.service.server import serve as run_server

    if backend not in (None, "local", "triton"):
        err_console.print(f"[red]error:[/] --backend is local or triton, not {escape(backend)}")
        raise typer.Exit(2)
    overrides = {"http_port": http_port, "grpc_port": grpc_port, "backend": backend}
    overrides |= {"triton_url": triton_url}
    settings = _settings(store, releases_dir, redis_url).model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with _clear_errors():  # a taken port is one line and exit code 2, not a traceback
        asyncio.run(run_server(settings))


@app.command()
def demo(
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="start the service after publishing")
    ] = True,
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


IdsFromOpt = Annotated[
    Path | None,
    typer.Option(
        help="release folder (exported or published) to take user and item ids from",
        show_default="the active release of the store",
    ),
]


@app.command()
def bench(
    target: Annotated[
        str, typer.Option(help="gRPC host:port or HTTP base URL")
    ] = "127.0.0.1:50051",
    transport: Annotated[str, typer.Option(help="grpc | http")] = "grpc",
    candidates: Annotated[int, typer.Option(help="candidate items per request")] = 200,
    recent: Annotated[int, typer.Option(help="real-time behaviors sent per request")] = 100,
    requests: Annotated[int, typer.Option(help="timed requests (after 100 warm-up)")] = 2000,
    concurrency: Annotated[int, typer.Option(help="requests in flight at once")] = 8,
    explain: Annotated[
        bool, typer.Option("--explain/--no-explain", help="ask for explanations in every request")
    ] = False,
    ids_from: IdsFromOpt = None,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    token: TokenOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """p50/p99 latency and throughput of Rank against a running service (ids from a release, so
    every candidate and behavior is a real item). Exits 1 if any request failed."""
    from reaseq.bench.client import bench as run_bench
    from reaseq.bench.client import format_report

    with _clear_errors():
        user_ids, item_ids = _release_ids(_settings(store, releases_dir, redis_url), ids_from)
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
                explain=explain,
                token=token,
                tls_ca=tls_ca,
            )
        )
    console.print(format_report(stats), soft_wrap=True, markup=False)
    print(_json(stats))
    _exit_on_failed_requests(stats)


@app.command("bench-switch")
def bench_switch_cmd(
    to: Annotated[
        str | None, typer.Option(help="release to switch to", show_default="the rollback target")
    ] = None,
    target: Annotated[str, typer.Option(help="gRPC host:port")] = "127.0.0.1:50051",
    duration: Annotated[float, typer.Option(help="seconds of load")] = 20.0,
    switch_at: Annotated[float, typer.Option(help="seconds into the load")] = 10.0,
    candidates: Annotated[int, typer.Option(help="candidate items per request")] = 200,
    recent: Annotated[int, typer.Option(help="real-time behaviors sent per request")] = 100,
    concurrency: Annotated[int, typer.Option(help="requests in flight at once")] = 8,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
    token: TokenOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """p50/p99 of gRPC Rank in steady state vs while the service switches release under load.
    Exits 1 if any request failed."""
    from reaseq.bench.client import bench_switch
    from reaseq.offline.publish import rollback_target

    settings = _settings(store, releases_dir, redis_url)
    with _clear_errors():
        user_ids, item_ids = _release_ids(settings)
        publisher = _publisher(settings)
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
            token=token,
            tls_ca=tls_ca,
        )
    )
    console.print_json(_json(stats))
    _exit_on_failed_requests(stats)


@app.command("bench-follow")
def bench_follow_cmd(
    target: Annotated[
        list[str], typer.Option(help="HTTP base URL of an instance; repeat for each")
    ],
    to: Annotated[
        str | None,
        typer.Option(help="release to alternate with", show_default="the rollback target"),
    ] = None,
    switches: Annotated[int, typer.Option(min=1, help="pointer moves")] = 10,
    pause_max: Annotated[
        float, typer.Option(help="longest random pause before each move, seconds")
    ] = 2.0,
    store: StoreOpt = None,
    releases_dir: ReleasesDirOpt = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """How long after `release activate` running instances serve the new release: moves the
    pointer between the active release and another, watching each instance's /readyz (an even
    number of moves leaves it where it was). Exits 1 if an instance missed a move."""
    from reaseq.bench.follow import bench_follow
    from reaseq.offline.publish import rollback_target

    settings = _settings(store, releases_dir, redis_url)
    with _clear_errors():
        publisher = _publisher(settings)
        active = publisher.active()
        if active is None:
            raise CliError("no active release: publish one first")
        if to is None:
            available = {m.release for m in publisher.complete()}
            to = rollback_target(publisher.history(), active, available)
        stats = asyncio.run(
            bench_follow(target, (active, to), publisher.activate, switches, pause_max)
        )
    console.print_json(_json(stats))
    if stats["missed"]:
        err_console.print(f"[red]error:[/] {stats['missed']} switches were not followed")
        raise typer.Exit(1)


@app.command("bench-verify")
def bench_verify_cmd(
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis to write the synthetic release into (its keys are removed)",
            show_default="$REASEQ_REDIS_URL, else redis://127.0.0.1:6379/0",
        ),
    ] = None,
    items: Annotated[int, typer.Option(help="items in the synthetic release")] = 100_000,
    users: Annotated[int, typer.Option(help="users in the synthetic release")] = 10_000,
    behaviors: Annotated[int, typer.Option(help="published behaviors per user")] = 50,
    dim: Annotated[int, typer.Option(help="vector width D")] = 96,
    repeats: Annotated[int, typer.Option(help="timed runs per step (median)")] = 3,
    value_format: Annotated[
        int,
        typer.Option(
            min=1, max=2, help="1: behavior vectors only; 2: also gap buckets and generated flags"
        ),
    ] = 2,
) -> None:
    """What verifying a release down to its values costs: seal at publish, embedded load,
    Redis write + read-back, `release activate`, the service's own check at load."""
    from reaseq.offline.verify_bench import measure

    url = redis_url or _settings(None, None, None).redis_url
    with _clear_errors():
        stats = measure(url, items, users, behaviors, dim, repeats, value_format=value_format)
    shape = {"items": items, "users": users, "behaviors": behaviors, "value_format": value_format}
    console.print_json(_json(shape | stats))


def _json(stats: Any) -> str:
    """Strict JSON: an undefined figure (no successful request to time) is null, not NaN."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(stats), allow_nan=False)


def _exit_on_failed_requests(stats: dict[str, Any]) -> None:
    """A benchmark with failed requests measured the wrong thing: say why, exit 1."""
    if stats["errors"]:
        err_console.print(
            f"[red]error:[/] {stats['errors']} requests failed; first: "
            f"{escape(str(stats['first_error']))}",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _release_ids(
    settings: ServiceSettings, release_dir: Path | None = None
) -> tuple[list[str], list[str]]:
    """User and item ids of a release folder, or of the store's active release; says on stderr
    which release and store they came from."""
    from reaseq.core.release import MANIFEST_FILE, Snapshot

    if release_dir is not None:
        if not (release_dir / MANIFEST_FILE).is_file():
            raise CliError(f"{release_dir.resolve()} is not a release folder (no {MANIFEST_FILE})")
        snap = Snapshot.open(release_dir)
        users, items = snap.user_ids.tolist(), snap.item_ids.tolist()
        where = f"release folder {release_dir.resolve()}"
    else:
        label = _store_label(settings)
        _existing_store(settings)
        publisher = _publisher(settings)
        active = publisher.active()
        if active is None:
            raise CliError(
                f"no active release in {label}: publish one (`reaseq pipeline`), point "
                "--store / --releases-dir / $REASEQ_RELEASES_DIR at the store the service "
                "reads, or pass --ids-from RELEASE_DIR"
            )
        where = f"release {active} in {label}"
        if settings.store == "embedded":
            snap = Snapshot.open(settings.releases_dir / active)
            users, items = snap.user_ids.tolist(), snap.item_ids.tolist()
        else:
            prefix = publisher.keys.prefix(active)
            users, items = [], []
            for key in publisher.client.scan_iter(match=prefix + "*", count=5000):
                kind, _, ident = key.decode()[len(prefix) :].partition(":")
                (users if kind == "user" else items if kind == "item" else []).append(ident)
    if not users or not items:
        raise CliError(f"{where} has {len(users)} users and {len(items)} items: nothing to send")
    err_console.print(
        f"ids: {len(users)} users, {len(items)} items from {where}", soft_wrap=True, highlight=False
    )
    return users, items


if __name__ == "__main__":
    app()
