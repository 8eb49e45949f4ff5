"""The benchmark matrix: the service (local and Triton backends) beside its floor and naive path.

Axes: backend {local, triton} x transport {grpc, http} x candidates x behaviors (sent as
`recent_item_ids`) x concurrency; every cell is a closed-loop run of the bench client (p50/p99,
req/s, candidates/s, errors). The same cells are measured on the floor (transport and client
alone, `floor.py`) and the naive path (`naive.py`), so each service cell reads as a fraction of
the floor and a multiple of the naive path.

Everything measured is started here as a subprocess on free ports, one system at a time (the
client shares the machine with it; nothing else of ours runs meanwhile): the floor, the naive
server, the service (`python -m reaseq.service.server`, release published into a temporary
embedded store or a Redis namespace of its own) and, for `triton`, a tritonserver the service
loads the release's model into.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from reaseq.bench.client import CALL_TIMEOUT_S, bench
from reaseq.bench.procs import ServerProcess, python_module, running
from reaseq.core.release import MANIFEST_FILE, Snapshot, code_version, read_manifest

BACKENDS = ("local", "triton")
TRANSPORTS = ("grpc", "http")
Log = Callable[[str], None]


@dataclass
class MatrixConfig:
    release: Path  # release folder (exported or published) the service and naive path serve
    out: Path = Path("artifacts/bench")  # matrix.json, matrix.md, matrix.png, logs/
    checkpoint: Path | None = None  # naive path's ranker.pt; None: `default_checkpoint(release)`
    backends: tuple[str, ...] = BACKENDS  # service model backends; () measures no service
    transports: tuple[str, ...] = TRANSPORTS
    candidates: tuple[int, ...] = (50, 200, 1000)  # candidate items per request
    behaviors: tuple[int, ...] = (50, 100)  # recent_item_ids per request
    concurrency: tuple[int, ...] = (1, 8, 32)  # requests in flight
    requests: int = 400  # timed requests per cell, at most
    max_seconds: float = 5.0  # cap on one cell's timed phase: slow cells end early
    warmup: int = 20  # untimed requests before each cell (at least the concurrency)
    floor: bool = True  # also measure the floor
    naive: bool = True  # also measure the naive path
    naive_threads: int = 1  # torch intra-op threads (the service's ONNX Runtime uses 1)
    store: Literal["embedded", "redis"] = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = "reaseq-bench"  # not the service's own, so its pointer is untouched
    service_env: dict[str, str] = field(default_factory=dict)  # extra REASEQ_* for the service
    seed: int = 0  # request bodies: the same for every system

    def __post_init__(self) -> None:
        if not (self.release / MANIFEST_FILE).is_file():
            raise ValueError(f"{self.release} is not a release folder (no {MANIFEST_FILE})")
        for name, allowed in (("backends", BACKENDS), ("transports", TRANSPORTS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise ValueError(f"{name}: {', '.join(bad)} not among {', '.join(allowed)}")
        if not self.transports:
            raise ValueError("transports: at least one of grpc, http")
        for name in ("candidates", "behaviors", "concurrency"):
            values = getattr(self, name)
            minimum = 0 if name == "behaviors" else 1
            if not values or min(values) < minimum:
                raise ValueError(f"{name}: give at least one value, each >= {minimum}")
        if self.requests < 1 or self.max_seconds <= 0 or self.warmup < 0:
            raise ValueError("requests >= 1, max_seconds > 0 and warmup >= 0, please")
        if not (self.backends or self.floor or self.naive):
            raise ValueError("nothing to measure: no backend, --no-floor and --no-naive")
        if self.store not in ("embedded", "redis"):
            raise ValueError(f"store is embedded or redis, not {self.store!r}")


@dataclass(frozen=True)
class Cell:
    transport: str
    n_candidates: int
    n_recent: int
    concurrency: int


@dataclass(frozen=True)
class System:
    """One thing measured: "floor", "naive", or "service-<backend>"."""

    name: str
    backend: str | None = None  # the service's model backend


def default_checkpoint(release_dir: Path) -> Path:
    """The training checkpoint that produced a release: beside its exports folder for a release
    still where the pipeline wrote it (`<work>/exports/<release>` -> `<work>/models/<features>/`),
    else `artifacts/<dataset>/models/<features>/` of the current directory."""
    from reaseq.offline.train import CHECKPOINT_FILE

    manifest = read_manifest(release_dir)
    if release_dir.resolve().parent.name == "exports":
        work = release_dir.resolve().parent.parent
    else:
        work = Path("artifacts") / manifest.dataset
    return work / "models" / manifest.features / CHECKPOINT_FILE


def plan_cells(cfg: MatrixConfig) -> list[Cell]:
    return [
        Cell(t, c, b, n)
        for t in cfg.transports
        for c in cfg.candidates
        for b in cfg.behaviors
        for n in cfg.concurrency
    ]


def plan_systems(cfg: MatrixConfig) -> list[System]:
    """Naive first: a checkpoint that is not the release's model fails the run at once."""
    systems = [System("naive")] if cfg.naive else []
    systems += [System("floor")] if cfg.floor else []
    return systems + [System(f"service-{b}", b) for b in cfg.backends]


def _release_ids(release_dir: Path) -> tuple[list[str], list[str]]:
    snapshot = Snapshot.open(release_dir)
    users, items = snapshot.user_ids.tolist(), snapshot.item_ids.tolist()
    if not users or not items:
        raise ValueError(f"{release_dir} has {len(users)} users and {len(items)} items")
    return users, items


def _publish(cfg: MatrixConfig, work: Path) -> dict[str, str]:
    """Publish the release where the service will read it; its store settings as REASEQ_*."""
    if cfg.store == "redis":
        from reaseq.core.redis_cluster import key_schema, sync_client
        from reaseq.offline.publish import RedisPublisher

        client = sync_client(cfg.redis_url, None, timeout_s=30)  # a single node or a cluster
        try:
            keys = key_schema(cfg.redis_namespace, cfg.redis_url)
            RedisPublisher(client, keys).publish(cfg.release)
        finally:
            client.close()
        return {
            "REASEQ_STORE": "redis",
            "REASEQ_REDIS_URL": cfg.redis_url,
            "REASEQ_REDIS_NAMESPACE": cfg.redis_namespace,
        }
    from reaseq.offline.publish import EmbeddedPublisher

    releases = work / "releases"
    EmbeddedPublisher(releases).publish(cfg.release)
    return {"REASEQ_STORE": "embedded", "REASEQ_RELEASES_DIR": str(releases)}


def _reference_server(system: System, cfg: MatrixConfig, logs: Path) -> ServerProcess:
    """The floor or the naive server, on free ports."""
    server = ServerProcess(system.name, [], logs)
    args = [f"--port={server.grpc_port}", f"--http-port={server.http_port}"]
    if system.name == "floor":
        server.command = python_module("reaseq.bench.floor", *args)
    else:
        checkpoint = cfg.checkpoint or default_checkpoint(cfg.release)
        server.command = python_module(
            "reaseq.bench.naive",
            f"--release={cfg.release.resolve()}",
            f"--checkpoint={checkpoint.resolve()}",
            f"--threads={cfg.naive_threads}",
            *args,
        )
    return server


def _service_server(
    system: System, cfg: MatrixConfig, logs: Path, store_env: dict[str, str]
) -> ServerProcess:
    """The service on free ports. The caller's REASEQ_* are not inherited (a benchmark states
    what it ran with): the store's settings, then --service-env over everything."""
    server = ServerProcess(
        system.name,
        python_module("reaseq.service.server"),
        logs,
        ready_path="/readyz",  # a release is loaded (and, for triton, pushed to Triton)
        drop_env_prefix="REASEQ_",
    )
    server.env = {
        "REASEQ_CONFIG": str(logs / "no-such-reaseq.toml"),  # no stray config file
        "REASEQ_HOST": "127.0.0.1",
        "REASEQ_HTTP_PORT": str(server.http_port),
        "REASEQ_GRPC_PORT": str(server.grpc_port),
        "REASEQ_BACKEND": system.backend or "local",
        **store_env,
    }
    return server


@contextmanager
def _started(
    system: System,
    cfg: MatrixConfig,
    work: Path,
    logs: Path,
    store_env: Callable[[], dict[str, str]],
) -> Iterator[ServerProcess]:
    """Start one system (and its tritonserver), yield it ready, stop it afterwards."""
    if system.backend is None:
        with running(_reference_server(system, cfg, logs)) as server:
            yield server
        return
    server = _service_server(system, cfg, logs, store_env())
    if system.backend == "local":
        server.env |= cfg.service_env
        with running(server):
            yield server
        return

    from reaseq.service.triton.server import TritonServer, binary_path

    if not binary_path().exists():
        raise RuntimeError(f"no tritonserver at {binary_path()}: install it, or drop triton")
    triton = TritonServer(work / "triton-repository", workdir=work / "triton")
    triton.log_path = logs / "tritonserver.log"
    server.env |= {
        "REASEQ_TRITON_URL": triton.grpc_url,
        "REASEQ_TRITON_RUNTIME": "python",  # the pip tritonserver has no native ORT backend
        # queueing on a busy machine shows as latency, as with the local backend, instead of
        # errors at the default 1 s
        "REASEQ_TRITON_TIMEOUT_S": str(CALL_TIMEOUT_S),
    }
    server.env |= cfg.service_env
    logs.mkdir(parents=True, exist_ok=True)
    triton.start()
    try:
        with running(server):
            yield server
    finally:
        triton.stop()


async def _measure(
    system: System,
    server: ServerProcess,
    cells: list[Cell],
    ids: tuple[list[str], list[str]],
    cfg: MatrixConfig,
    log: Log,
) -> list[dict[str, Any]]:
    users, items = ids
    for transport in cfg.transports:  # the first requests of a fresh process are not the cell's
        await bench(
            transport,
            server.targets[transport],
            users,
            items,
            n_candidates=max(cfg.candidates),
            n_recent=max(cfg.behaviors),
            requests=5,
            concurrency=1,
            warmup=5,
            seed=cfg.seed + 1,
        )
    rows = []
    for cell in cells:
        stats = await bench(
            cell.transport,
            server.targets[cell.transport],
            users,
            items,
            n_candidates=cell.n_candidates,
            n_recent=cell.n_recent,
            requests=max(cfg.requests, cell.concurrency),
            concurrency=cell.concurrency,
            warmup=max(cfg.warmup, cell.concurrency),
            seed=cfg.seed,
            max_seconds=cfg.max_seconds,
        )
        row = {"system": system.name, "backend": system.backend} | stats
        rows.append(row)
        log(
            f"{system.name:>14} {cell.transport:<4} C={cell.n_candidates:<4} L={cell.n_recent:<3} "
            f"x{cell.concurrency:<2}: p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
            f"{row['throughput_rps']:7.0f} req/s  {row['errors']} errors"
        )
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: throughput over the naive path's and the floor's in the same cell, and p50 over
    the floor's (what features + model add to transport); None where not measured."""

    def key(row: dict[str, Any]) -> tuple:
        return (row["transport"], row["n_candidates"], row["n_recent"], row["concurrency"])

    by_system = {(row["system"], key(row)): row for row in rows}
    out = []
    for row in rows:
        naive = by_system.get(("naive", key(row)))
        floor = by_system.get(("floor", key(row)))
        out.append(
            row
            | {
                "x_naive": _ratio(row["throughput_rps"], naive and naive["throughput_rps"]),
                "x_floor": _ratio(row["throughput_rps"], floor and floor["throughput_rps"]),
                "p50_over_floor_ms": (row["p50_ms"] - floor["p50_ms"]) if floor else None,
            }
        )
    return out


def _ratio(value: float, reference: float | None) -> float | None:
    return value / reference if reference else None


def _meta(cfg: MatrixConfig, started: dt.datetime, seconds: float) -> dict[str, Any]:
    manifest = read_manifest(cfg.release)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    config["checkpoint"] = str(cfg.checkpoint or default_checkpoint(cfg.release))
    return {
        "release": manifest.release,
        "dataset": manifest.dataset,
        "features": manifest.features,
        "vector_dim": manifest.vector_dim,
        "max_behaviors": manifest.max_behaviors,
        "n_items": manifest.n_items,
        "n_users": manifest.n_users,
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "cpus": len(os.sched_getaffinity(0)),  # what this process may use
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "python": platform.python_version(),
        "code_version": code_version(),
        "config": config,
    }


def run_matrix(cfg: MatrixConfig, log: Log = print) -> dict[str, Any]:
    """Measure every planned system on every cell; the report (meta + cells with ratios)."""
    started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    cells, systems = plan_cells(cfg), plan_systems(cfg)
    if cfg.naive:  # fail before anything starts, not after the floor's cells
        checkpoint = cfg.checkpoint or default_checkpoint(cfg.release)
        if not checkpoint.is_file():
            raise ValueError(
                f"the naive path needs the release's training checkpoint; {checkpoint} does not "
                "exist: pass --checkpoint, or --no-naive"
            )
    ids = _release_ids(cfg.release)
    logs = cfg.out / "logs"
    log(f"{len(systems)} systems x {len(cells)} cells; logs in {logs}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="reaseq-bench-") as tmp:
        work = Path(tmp)
        published: dict[str, str] = {}

        def store_env() -> dict[str, str]:  # published once, for the first service started
            if not published:
                published.update(_publish(cfg, work))
            return published

        for system in systems:
            t_system = time.perf_counter()
            with _started(system, cfg, work, logs, store_env) as server:
                log(f"{system.name}: ready in {time.perf_counter() - t_system:.1f} s")
                rows += asyncio.run(_measure(system, server, cells, ids, cfg, log))
    return {
        "meta": _meta(cfg, started, time.perf_counter() - t0),
        "cells": add_ratios(rows),
    }
