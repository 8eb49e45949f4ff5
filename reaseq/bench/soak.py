"""`reaseq soak`: minutes of mixed gRPC + HTTP load on a real `reaseq serve` over a Redis of its
own, with a release switch and a Redis crash inside, every request recorded.

What a short benchmark cannot show: errors that only come with time or with an operation under
load (a release switch, a store restart), and memory that creeps. So the soak

1. starts redis-server on a free loopback port (append-only file, so a restart keeps the data,
   as a real store's does), publishes release A, starts `reaseq serve --store redis`;
2. sends closed-loop traffic drawn from the release (`workload.py`: skewed users and items,
   sessions, unknown ids, every answer checked) over both transports from one asyncio process;
3. at `switch_at` of the run publishes release B and activates it, as an operator does
   (`reaseq publish --no-activate`, then `reaseq release activate`, each its own process);
4. at `kill_at` SIGKILLs redis-server and restarts it on the same port `outage_s` later;
5. samples the server's resident memory and CPU time every `rss_interval_s` (CPU per request
   tells a slower server from a busier machine: the soak shares its CPUs with the server).

The analysis (`analyse`) is pure: records and event times in, the report out. Errors inside the
two fault windows are expected and reported apart (they must be fast, clear UNAVAILABLE / 503);
errors outside them are the headline and must be none.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import math
import os
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from reaseq.bench.procs import HOST, RedisProcess, ServerProcess, log_tail
from reaseq.bench.workload import (
    RankCall,
    ReleaseIds,
    TrafficConfig,
    UserTraffic,
    grpc_answer_fields,
)
from reaseq.core.release import MANIFEST_FILE, Snapshot, read_manifest, write_atomic

NAMESPACE = "reaseq-soak"
CLEAR_FAULT_CODES = frozenset({"UNAVAILABLE", "HTTP 503"})  # what a store outage may answer
OK = "OK"


def parse_duration(text: str) -> float:
    """Seconds from "600", "600s", "10m", "1.5h" or "500ms"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise ValueError(f"a duration is a number with an optional unit ms|s|m|h, got {text!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) * scale


@dataclass(frozen=True)
class SoakConfig:
    """One soak. Times are seconds from the start of the load; `warmup_s` and `rss_window_s`
    default to a share of the duration (30 s and 60 s on a 10-minute run)."""

    export_a: Path
    out: Path
    export_b: Path | None = None  # None: a copy of export_a under a new release id
    duration_s: float = 600.0
    concurrency: int = 8  # requests in flight, split between gRPC and HTTP
    think_ms: float = 0.0  # pause after each answer, uniform 0..think_ms (0: closed loop)
    switch_at: float = 1 / 3  # share of the duration
    kill_at: float = 2 / 3
    outage_s: float = 5.0  # redis-server down this long
    switch_grace_s: float = 2.0  # the switch window ends this long after B is first served
    recovery_grace_s: float = 5.0  # the outage window ends this long after Redis is back
    warmup_s: float | None = None
    rss_window_s: float | None = None
    rss_interval_s: float = 1.0
    call_timeout_s: float = 10.0  # client side, per request: a stuck call shows as an error
    max_outside_errors: int = 0
    max_rss_growth_pct: float = 5.0
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    service_env: dict[str, str] = field(default_factory=dict)  # REASEQ_* for the service

    def __post_init__(self) -> None:
        if self.concurrency < 2:
            raise ValueError("concurrency must be >= 2: at least one gRPC and one HTTP caller")
        if not 0 < self.switch_at < self.kill_at < 1:
            raise ValueError("need 0 < switch_at < kill_at < 1 (shares of the duration)")
        if self.duration_s <= 0 or self.outage_s <= 0 or self.rss_interval_s <= 0:
            raise ValueError("duration, outage and the RSS interval must be positive")
        if self.kill_at * self.duration_s + self.outage_s >= self.duration_s:
            raise ValueError("Redis must be back before the run ends: shorten --outage")

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(30.0, 0.1 * self.duration_s)

    @property
    def rss_window(self) -> float:
        if self.rss_window_s is not None:
            return self.rss_window_s
        return min(60.0, self.duration_s / 6)


@dataclass
class Record:
    """One request: when it started (s from the load's start), how long it took, and how it
    ended: OK, a gRPC status name, "HTTP <status>", WRONG_ANSWER, TIMEOUT or CONNECTION_ERROR."""

    start: float
    latency: float
    transport: str
    code: str
    detail: str = ""  # the error's kind or message, in one short line
    release: str = ""  # the release an answer names (OK and WRONG_ANSWER)

    @property
    def end(self) -> float:
        return self.start + self.latency


# --- the releases ---------------------------------------------------------------------------


def renamed_copy(export: Path, target: Path) -> Path:
    """A copy of `export` under a new release id (and creation time): the second release of a
    soak given one export, since publishing the same folder again names the same release and
    nothing would switch. The files and values are the export's, so their hashes still hold."""
    manifest = read_manifest(export)
    release = f"{manifest.release[:57]}-soak-b"
    folder = target / release
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(export, folder)
    now = dt.datetime.now(dt.UTC).isoformat()
    renamed = manifest.model_copy(update={"release": release, "created_at": now})
    write_atomic(folder / MANIFEST_FILE, renamed.model_dump_json(indent=2).encode())
    return folder


def shared_ids(export_a: Path, export_b: Path, seed: int) -> ReleaseIds:
    """The ids traffic is drawn from: those of release A that B holds too, most popular first,
    so every answer's unknown-id flags are right whichever release serves it."""
    ids = ReleaseIds.from_release(export_a, seed=seed)
    snap_b = Snapshot.open(export_b)
    users_b = {str(u) for u in snap_b.user_ids}
    items_b = {str(i) for i in snap_b.item_ids}
    if ids.known_users <= users_b and ids.known_items <= items_b:
        return ids
    users = [ids.user_ids[r] for r in ids.user_order if ids.user_ids[r] in users_b]
    items = [ids.item_ids[r] for r in ids.item_order if ids.item_ids[r] in items_b]
    return ReleaseIds(users, items, np.arange(len(users)), np.arange(len(items)))


# --- the load -------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(str(text).split())[:limit]


Outcome = tuple[str, str, str, list[float] | None]  # code, detail, release, scores when OK


async def _grpc_caller(target: str, timeout_s: float):  # -> (caller, channel)
    import grpc

    from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

    channel = grpc.aio.insecure_channel(target)
    stub = ranking_pb2_grpc.RankingServiceStub(channel)

    async def call(rank: RankCall) -> Outcome:
        try:
            reply = await stub.Rank(ranking_pb2.RankRequest(**rank.body), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return err.code().name, _one_line(err.details() or ""), "", None
        answer = grpc_answer_fields(reply)
        problem = rank.check(answer)
        if problem is not None:
            return "WRONG_ANSWER", problem, reply.release, None
        return OK, "", reply.release, answer["scores"]

    return call, channel


async def _http_caller(base_url: str, timeout_s: float, connections: int):  # -> (caller, client)
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s)

    async def call(rank: RankCall) -> Outcome:
        try:
            response = await client.post("/v1/rank", json=rank.body)
        except httpx.TimeoutException as err:
            return "TIMEOUT", _one_line(f"{type(err).__name__}: {err}"), "", None
        except httpx.HTTPError as err:
            return "CONNECTION_ERROR", _one_line(f"{type(err).__name__}: {err}"), "", None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code != 200:
            kind = answer.get("error", "") if isinstance(answer, dict) else ""
            return f"HTTP {response.status_code}", kind or _one_line(response.text), "", None
        problem = rank.check(answer)
        if problem is not None:
            return "WRONG_ANSWER", problem, answer.get("release", ""), None
        return OK, "", answer["release"], answer["scores"]

    return call, client


def read_usage(pid: int) -> tuple[int, float] | None:
    """(resident bytes, CPU seconds used so far) of a process (psutil if installed, else
    /proc), None once it is gone."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                return int(process.memory_info().rss), times.user + times.system
        except psutil.Error:
            return None
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return rss, ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class SoakRun:
    """What one soak recorded: every request, the fault events, the memory samples."""

    records: list[Record] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)  # name -> s from the load's start
    rss: list[tuple[float, int]] = field(default_factory=list)  # (s, bytes)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (s, server CPU s so far)
    duration_s: float = 0.0
    server_exit: int | None = None  # the server's exit code, if it died during the run


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM ends a soak like Ctrl-C: the redis-server and service it started are stopped."""
    raise SystemExit(128 + signum)


class Soak:
    """The processes of one soak and the order things happen in."""

    def __init__(self, cfg: SoakConfig, log: Callable[[str], None]) -> None:
        # absolute paths: the server and the publish commands run in the log folder
        export_b = cfg.export_b.resolve() if cfg.export_b else None
        cfg = replace(
            cfg, export_a=cfg.export_a.resolve(), export_b=export_b, out=cfg.out.resolve()
        )
        self.cfg, self.log = cfg, log
        self.logs = cfg.out / "logs"
        self.redis = RedisProcess(cfg.out / "redis")
        self.server: ServerProcess | None = None

    def _env(self) -> dict[str, str]:
        """The store's REASEQ_* for the service and the publish commands (the caller's own
        REASEQ_* are not inherited: a soak states what it ran with)."""
        return {
            "REASEQ_CONFIG": str(self.logs / "no-such-reaseq.toml"),  # no stray config file
            "REASEQ_STORE": "redis",
            "REASEQ_REDIS_URL": self.redis.url,
            "REASEQ_REDIS_NAMESPACE": NAMESPACE,
        }

    async def _reaseq(self, name: str, *args: str) -> None:
        """One `reaseq` command as its own process (as an operator runs it), output to a log."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("REASEQ_")}
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "reaseq.cli",
                *args,
                env=inherited | self._env(),
                cwd=self.logs,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
            code = await proc.wait()
        if code != 0:
            raise RuntimeError(
                f"`reaseq {' '.join(args)}` exited {code}: {log_tail(self.logs / f'{name}.log')}"
            )

    def run(self) -> tuple[SoakRun, str, str]:
        """Set up, load, tear down; returns the run and the ids of releases A and B."""
        import redis

        from reaseq.core.keys import KeySchema
        from reaseq.offline.publish import RedisPublisher

        cfg = self.cfg
        self.logs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cfg.out / "redis", ignore_errors=True)  # a fresh store every run
        export_b = cfg.export_b or renamed_copy(cfg.export_a, cfg.out / "release-b")
        release_a = read_manifest(cfg.export_a).release
        release_b = read_manifest(export_b).release
        if release_a == release_b:
            raise ValueError(f"both exports are release {release_a}: nothing would switch")
        ids = shared_ids(cfg.export_a, export_b, cfg.traffic.seed)
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops them
        try:
            self.redis.start()
            self.log(f"redis-server on {self.redis.url} (append-only file in {self.redis.workdir})")
            client = redis.Redis.from_url(self.redis.url, socket_timeout=30)
            try:
                RedisPublisher(client, KeySchema(NAMESPACE)).publish(cfg.export_a)
            finally:
                client.close()
            self.log(f"published and activated release A {release_a}")
            self.server = ServerProcess(
                "reaseq-serve",
                [sys.executable, "-m", "reaseq.cli", "serve", "--store", "redis"],
                self.logs,
                ready_path="/readyz",
                drop_env_prefix="REASEQ_",
            )
            self.server.env = self._env() | {
                "REASEQ_HOST": HOST,
                "REASEQ_HTTP_PORT": str(self.server.http_port),
                "REASEQ_GRPC_PORT": str(self.server.grpc_port),
                **cfg.service_env,
            }
            self.server.start()
            self.log(f"reaseq serve ready: {self.server.targets} (log {self.server.log_path})")
            run = asyncio.run(self._load(ids, export_b, release_b))
        finally:
            if self.server is not None:
                self.server.stop()
            self.redis.stop()
            signal.signal(signal.SIGTERM, previous)
        return run, release_a, release_b

    async def _load(self, ids: ReleaseIds, export_b: Path, release_b: str) -> SoakRun:
        cfg = self.cfg
        assert self.server is not None and self.server.proc is not None
        run = SoakRun()
        n_grpc = math.ceil(cfg.concurrency / 2)
        n_http = cfg.concurrency - n_grpc
        grpc_call, channel = await _grpc_caller(self.server.targets["grpc"], cfg.call_timeout_s)
        http_call, client = await _http_caller(
            self.server.targets["http"], cfg.call_timeout_s, n_http
        )
        t0 = perf_counter()
        end = t0 + cfg.duration_s

        def now() -> float:
            return perf_counter() - t0

        async def caller(transport: str, call: Callable, number: int) -> None:
            rng = np.random.default_rng([cfg.traffic.seed, number])
            traffic = UserTraffic(ids, cfg.traffic, rng)
            think_s = cfg.think_ms / 1000
            while perf_counter() < end:
                rank = traffic.next_call()
                start = perf_counter()
                code, detail, release, scores = await call(rank)
                latency = perf_counter() - start
                run.records.append(Record(start - t0, latency, transport, code, detail, release))
                if scores is not None:
                    traffic.observe(rank, scores)
                if think_s:
                    await asyncio.sleep(float(rng.uniform(0.0, think_s)))

        async def sample_memory() -> None:
            pid = self.server.proc.pid
            while perf_counter() < end:
                usage = read_usage(pid)
                if usage is not None:
                    run.rss.append((now(), usage[0]))
                    run.cpu.append((now(), usage[1]))
                if self.server.proc.poll() is not None and run.server_exit is None:
                    run.server_exit = self.server.proc.returncode
                    run.events["server_exited"] = now()
                    self.log(f"reaseq serve exited {run.server_exit} at {now():.1f} s")
                await asyncio.sleep(cfg.rss_interval_s)

        async def faults() -> None:
            await asyncio.sleep(cfg.switch_at * cfg.duration_s)
            run.events["publish_b_start"] = now()
            await self._reaseq("publish-b", "publish", str(export_b), "--no-activate")
            run.events["activate_start"] = now()
            await self._reaseq("activate-b", "release", "activate", release_b)
            run.events["activate_end"] = now()
            self.log(
                f"{run.events['activate_start']:.1f} s: release B {release_b} activated "
                f"(published in {run.events['activate_start'] - run.events['publish_b_start']:.1f}"
                " s)"
            )
            await asyncio.sleep(max(0.0, cfg.kill_at * cfg.duration_s - now()))
            run.events["redis_kill"] = now()
            self.redis.kill()
            self.log(f"{run.events['redis_kill']:.1f} s: redis-server killed (SIGKILL)")
            await asyncio.sleep(cfg.outage_s)
            run.events["redis_restart"] = now()
            await asyncio.to_thread(self.redis.start)
            run.events["redis_ready"] = now()
            self.log(f"{run.events['redis_ready']:.1f} s: redis-server back on the same port")

        self.log(
            f"load: {n_grpc} gRPC + {n_http} HTTP callers for {cfg.duration_s:.0f} s; switch at "
            f"{cfg.switch_at * cfg.duration_s:.0f} s, Redis kill at "
            f"{cfg.kill_at * cfg.duration_s:.0f} s for {cfg.outage_s:.0f} s"
        )
        try:
            tasks = [caller("grpc", grpc_call, i) for i in range(n_grpc)]
            tasks += [caller("http", http_call, n_grpc + i) for i in range(n_http)]
            await asyncio.gather(*tasks, sample_memory(), faults())
        finally:
            await channel.close()
            await client.aclose()
        run.duration_s = now()
        return run


# --- the analysis ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A span where errors are expected (a fault and its recovery)."""

    name: str
    start: float
    end: float

    def holds(self, record: Record) -> bool:
        """A request belongs where it ended: when its answer (or error) came."""
        return self.start <= record.end <= self.end


def window_of(record: Record, windows: Sequence[Window]) -> Window | None:
    """The window a request ended in; the latest-starting one where two overlap (the newer
    fault is the likelier cause)."""
    holding = [w for w in windows if w.holds(record)]
    return max(holding, key=lambda w: w.start) if holding else None


def _code(record: Record) -> str:
    """The error as reported: its code, and its kind where the code alone is vague."""
    if record.code == OK:
        return OK
    return f"{record.code} {record.detail}" if record.code.startswith("HTTP") else record.code


def _latency_ms(records: Sequence[Record]) -> dict[str, float | None]:
    ms = np.array([r.latency * 1000 for r in records if r.code == OK])
    if not len(ms):
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


def _server_cpu_s(cpu: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """Server CPU seconds spent between two times (interpolated between samples)."""
    if len(cpu) < 2 or end <= cpu[0][0] or start >= cpu[-1][0]:
        return None
    times, used = zip(*cpu, strict=True)
    return float(np.interp(end, times, used) - np.interp(start, times, used))


def _phase(
    name: str,
    start: float,
    end: float,
    records: Sequence[Record],
    cpu: Sequence[tuple[float, float]],
) -> dict[str, Any]:
    inside = [r for r in records if start <= r.end < end]  # where it ended, as in windows
    span = max(end - start, 1e-9)
    errors = [r for r in inside if r.code != OK]
    cpu_s = _server_cpu_s(cpu, start, end)
    return {
        "phase": name,
        "start_s": round(start, 2),
        "end_s": round(end, 2),
        "requests": len(inside),
        "rps": round(len(inside) / span, 1),
        "errors": len(errors),
        "error_codes": dict(Counter(_code(r) for r in errors)),
        "grpc": _latency_ms([r for r in inside if r.transport == "grpc"]),
        "http": _latency_ms([r for r in inside if r.transport == "http"]),
        "all": _latency_ms(inside),
        "releases": dict(Counter(r.release for r in inside if r.code == OK)),
        "server_cpu_pct": round(100 * cpu_s / span, 1) if cpu_s is not None else None,
        "server_cpu_ms_per_request": round(1000 * cpu_s / len(inside), 2)
        if cpu_s is not None and inside
        else None,
    }


def _window_report(window: Window, inside: Sequence[Record]) -> dict[str, Any]:
    failed = [r for r in inside if r.code != OK]
    return {
        "window": window.name,
        "start_s": round(window.start, 2),
        "end_s": round(window.end, 2),
        "requests": len(inside),
        "errors": len(failed),
        "error_codes": dict(Counter(_code(r) for r in failed)),
        "unclear_errors": sum(r.code not in CLEAR_FAULT_CODES for r in failed),
        "max_failed_latency_ms": round(max(r.latency for r in failed) * 1000, 1)
        if failed
        else None,
    }


def _rss_report(cfg: SoakConfig, rss: Sequence[tuple[float, int]], end: float) -> dict[str, Any]:
    """Median RSS of the first window after warm-up against the last window of the run."""
    first = [b for t, b in rss if cfg.warmup <= t < cfg.warmup + cfg.rss_window]
    last = [b for t, b in rss if end - cfg.rss_window <= t <= end]
    if not first or not last:
        return {"growth_pct": None, "samples": len(rss)}
    base, final = float(np.median(first)), float(np.median(last))
    # a leak keeps climbing, warm-up (allocator arenas, a second release's model) levels off:
    # the slope of the last third says which, beside the growth figure
    late = np.array([(t, b) for t, b in rss if t >= end * 2 / 3], dtype=np.float64)
    slope = float(np.polyfit(late[:, 0] / 60, late[:, 1] / 2**20, 1)[0]) if len(late) > 2 else None
    return {
        "first_window_s": [round(cfg.warmup, 1), round(cfg.warmup + cfg.rss_window, 1)],
        "last_window_s": [round(end - cfg.rss_window, 1), round(end, 1)],
        "first_median_mib": round(base / 2**20, 1),
        "last_median_mib": round(final / 2**20, 1),
        "max_mib": round(max(b for _, b in rss) / 2**20, 1),
        "growth_pct": round(100 * (final - base) / base, 2),
        "last_third_mib_per_min": round(slope, 3) if slope is not None else None,
        "samples": len(rss),
    }


def analyse(cfg: SoakConfig, run: SoakRun, release_a: str, release_b: str) -> dict[str, Any]:
    """The report: errors outside the fault windows (the headline), each window's errors, the
    phases' latency and releases, the memory growth, and the verdict."""
    records, events, end = run.records, run.events, run.duration_s
    served_b = [r.end for r in records if r.code == OK and r.release == release_b]
    first_b = min(served_b) if served_b else None
    windows: list[Window] = []
    if "activate_start" in events:
        seen = first_b if first_b is not None else events.get("activate_end", end)
        windows.append(
            Window("release switch", events["activate_start"], seen + cfg.switch_grace_s)
        )
    if "redis_kill" in events:
        back = events.get("redis_ready", end)
        windows.append(Window("redis outage", events["redis_kill"], back + cfg.recovery_grace_s))
    by_window: dict[Window | None, list[Record]] = {w: [] for w in windows} | {None: []}
    for record in records:
        by_window[window_of(record, windows)].append(record)
    outside = [r for r in by_window[None] if r.code != OK]
    window_reports = [_window_report(w, by_window[w]) for w in windows]
    if "redis_ready" in events:
        back = events["redis_ready"]
        recovered = [r.end for r in records if r.code == OK and r.start >= back]
        window_reports[-1]["first_ok_after_restart_s"] = (
            round(min(recovered) - back, 2) if recovered else None
        )

    bounds = [("warm-up", 0.0), ("release A", cfg.warmup)]
    for window in windows:
        after = "release B" if window.name == "release switch" else "after recovery"
        bounds += [(window.name, window.start), (after, window.end)]
    bounds.append(("", end))
    phases = [  # a phase squeezed out by overlapping windows is left out
        _phase(name, start, bounds[i + 1][1], records, run.cpu)
        for i, (name, start) in enumerate(bounds[:-1])
        if bounds[i + 1][1] > start
    ]
    memory = _rss_report(cfg, run.rss, end)
    failures = []
    if len(outside) > cfg.max_outside_errors:
        failures.append(f"{len(outside)} errors outside the fault windows")
    if memory["growth_pct"] is None:
        failures.append("too few RSS samples to measure growth")
    elif memory["growth_pct"] >= cfg.max_rss_growth_pct:
        failures.append(f"RSS grew {memory['growth_pct']:.2f}% (limit {cfg.max_rss_growth_pct}%)")
    if first_b is None:
        failures.append(f"release B ({release_b}) was never served")
    unclear = sum(w["unclear_errors"] for w in window_reports)
    if unclear:
        failures.append(f"{unclear} errors inside fault windows were not UNAVAILABLE / HTTP 503")
    if run.server_exit is not None:
        failures.append(f"reaseq serve exited {run.server_exit} during the run")
    n_ok = sum(r.code == OK for r in records)
    return {
        "config": {
            "export_a": str(cfg.export_a),
            "export_b": str(cfg.export_b) if cfg.export_b else None,
            "duration_s": cfg.duration_s,
            "concurrency": cfg.concurrency,
            "think_ms": cfg.think_ms,
            "outage_s": cfg.outage_s,
            "switch_grace_s": cfg.switch_grace_s,
            "recovery_grace_s": cfg.recovery_grace_s,
            "warmup_s": cfg.warmup,
            "rss_window_s": cfg.rss_window,
            "traffic": asdict(cfg.traffic),
            "service_env": cfg.service_env,
        },
        "release_a": release_a,
        "release_b": release_b,
        "duration_s": round(end, 2),
        "requests": len(records),
        "ok": n_ok,
        "rps": round(len(records) / end, 1) if end else 0.0,
        "by_transport": dict(Counter(r.transport for r in records)),
        "events_s": {k: round(v, 2) for k, v in events.items()},
        "switch_seen_s": round(first_b, 2) if first_b is not None else None,
        "errors_outside_windows": len(outside),
        "outside_error_codes": dict(Counter(_code(r) for r in outside)),
        "outside_error_examples": [asdict(r) for r in outside[:10]],
        "windows": window_reports,
        "phases": phases,
        "rss": memory,
        "failures": failures,
        "passed": not failures,
    }


def write_records(run: SoakRun, out: Path) -> list[Path]:
    """Every request and every sample of the server (RSS, CPU) as CSV, for a look beyond the
    report."""
    requests, server = out / "requests.csv", out / "server.csv"
    with requests.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["start_s", "latency_ms", "transport", "code", "detail", "release"])
        for r in run.records:
            writer.writerow(
                [
                    f"{r.start:.4f}",
                    f"{r.latency * 1000:.2f}",
                    r.transport,
                    r.code,
                    r.detail,
                    r.release,
                ]
            )
    with server.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "rss_bytes", "cpu_s"])
        writer.writerows(
            (f"{t:.2f}", b, f"{c:.3f}") for (t, b), (_, c) in zip(run.rss, run.cpu, strict=True)
        )
    return [requests, server]
