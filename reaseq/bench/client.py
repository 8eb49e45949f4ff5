"""Closed-loop latency/throughput benchmark of a running service, over gRPC or HTTP.

Pure client code (stubs + grpc/httpx only), so it measures what a caller sees and can run from
any machine; it lives outside `reaseq.service` because it is a caller, not part of the service.
Each request scores `n_candidates` items against `n_recent` real-time behaviors.

    reaseq bench --transport grpc --target 127.0.0.1:50051
    reaseq bench-switch --target 127.0.0.1:50051      # p99 while a release switches
    REASEQ_TOKEN=... reaseq bench --tls-ca ca.pem     # a service with tokens and gRPC TLS

Failed requests are counted, never fatal, and the first one is kept in words (`first_error`), so
a run against a wrong port or a service without a release says so instead of timing errors.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

import grpc
import httpx

from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

CALL_TIMEOUT_S = 10.0  # per request, so a stuck server shows up as errors, not a hang


def _make_requests(
    user_ids: list[str], item_ids: list[str], n_candidates: int, n_recent: int, n: int, seed: int
) -> list[dict[str, Any]]:
    """`n` request bodies, fixed by `seed`, so runs over both transports send the same load."""
    if not user_ids or not item_ids:
        raise ValueError("bench needs at least one user id and one item id")
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        if len(item_ids) >= n_candidates:
            candidates = rng.sample(item_ids, n_candidates)
        else:
            candidates = rng.choices(item_ids, k=n_candidates)
        requests.append(
            {
                "user_id": rng.choice(user_ids),
                "candidate_item_ids": candidates,
                "recent_item_ids": rng.choices(item_ids, k=n_recent),
            }
        )
    return requests


def describe_error(exc: BaseException) -> str:
    """One line saying why a request failed: the gRPC status and details, or the HTTP status and
    the service's message, instead of a multi-line exception dump."""
    if isinstance(exc, grpc.aio.AioRpcError):
        text = f"{exc.code().name}: {exc.details()}"
    elif isinstance(exc, httpx.HTTPStatusError):
        text = f"HTTP {exc.response.status_code}: {exc.response.text.strip()}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def _run(
    call: Callable[[dict[str, Any]], Awaitable[None]],
    bodies: list[dict[str, Any]],
    warmup: int,
    concurrency: int,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Run warm-up then the timed requests with `concurrency` workers; summarise. With
    `max_seconds`, the timed phase stops sending after that long (a slow server's cell ends in
    bounded time; `requests` then counts what was sent)."""
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = float("inf")

    async def worker(queue: list[dict[str, Any]], record: bool) -> None:
        while queue and perf_counter() < stop_at:
            body = queue.pop()
            start = perf_counter()
            try:
                await call(body)
            except Exception as exc:  # counted, never fatal: the benchmark reports error rates
                if record:
                    errors.append(describe_error(exc))
                continue
            if record:
                latencies.append(perf_counter() - start)

    warm = bodies[:warmup]
    await asyncio.gather(*(worker(warm, record=False) for _ in range(concurrency)))
    timed = bodies[warmup:][::-1]  # pop() from the end keeps request order
    start = perf_counter()
    if max_seconds is not None:
        stop_at = start + max_seconds
    await asyncio.gather(*(worker(timed, record=True) for _ in range(concurrency)))
    wall = perf_counter() - start

    ms = sorted(x * 1000 for x in latencies)
    n_candidates = len(bodies[0]["candidate_item_ids"]) if bodies else 0
    return {
        "requests": len(bodies) - warmup - len(timed),
        "ok": len(ms),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "concurrency": concurrency,
        "n_candidates": n_candidates,
        "n_recent": len(bodies[0]["recent_item_ids"]) if bodies else 0,
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "wall_s": wall,
        "throughput_rps": len(ms) / wall if wall > 0 else 0.0,
        "candidates_per_s": len(ms) * n_candidates / wall if wall > 0 else 0.0,
    }


def grpc_channel(target: str, token: str | None, tls_ca: Path | None) -> grpc.aio.Channel:
    """A channel to `target`: TLS trusting `tls_ca` when given (the token then travels as call
    credentials, which gRPC sends only over TLS); without TLS the token goes as metadata on each
    call (`_rank_caller`)."""
    if tls_ca is None:
        return grpc.aio.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.aio.secure_channel(target, credentials)


@asynccontextmanager
async def _rank_caller(
    transport: str,
    target: str,
    concurrency: int,
    token: str | None = None,
    tls_ca: Path | None = None,
) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[Any]]]:
    """A function sending one Rank request over gRPC (one aio channel) or HTTP (one pooled
    client), returning the reply; errors raise. `token` is sent as `authorization: Bearer`;
    `tls_ca` is the CA that signed the server's certificate."""
    if transport == "grpc":
        metadata = (("authorization", f"Bearer {token}"),) if token and tls_ca is None else None
        async with grpc_channel(target, token, tls_ca) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)

            async def call_grpc(body: dict[str, Any]) -> Any:
                request = ranking_pb2.RankRequest(**body)
                return await stub.Rank(request, timeout=CALL_TIMEOUT_S, metadata=metadata)

            yield call_grpc
    elif transport == "http":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        verify = ssl.create_default_context(cafile=tls_ca) if tls_ca is not None else True
        async with httpx.AsyncClient(
            base_url=target, limits=limits, timeout=CALL_TIMEOUT_S, headers=headers, verify=verify
        ) as c:

            async def call_http(body: dict[str, Any]) -> Any:
                response = await c.post("/v1/rank", json=body)
                response.raise_for_status()
                return response.json()

            yield call_http
    else:
        raise ValueError(f"transport must be grpc or http, got {transport!r}")


async def bench(
    transport: str,
    target: str,
    user_ids: list[str],
    item_ids: list[str],
    n_candidates: int = 200,
    n_recent: int = 100,
    requests: int = 2000,
    concurrency: int = 8,
    warmup: int = 100,
    seed: int = 0,
    max_seconds: float | None = None,
    explain: bool = False,
    token: str | None = None,
    tls_ca: Path | None = None,
) -> dict[str, Any]:
    """Benchmark Rank at `target` (gRPC host:port, or HTTP base URL); `max_seconds` caps the
    timed phase (None: all `requests` are sent); `explain` asks every request for explanations
    (their cost: compare with a run without); `token` / `tls_ca` reach a protected service."""
    bodies = _make_requests(user_ids, item_ids, n_candidates, n_recent, warmup + requests, seed)
    if explain:
        for body in bodies:
            body["explain"] = True
    async with _rank_caller(transport, target, concurrency, token, tls_ca) as call:
        report = {"transport": transport, "target": target}
        return report | await _run(call, bodies, warmup, concurrency, max_seconds)


def format_report(report: dict[str, Any]) -> str:
    """One human-readable line per benchmark run."""
    return (
        f"{report['transport']} {report['target']}: {report['ok']}/{report['requests']} ok, "
        f"{report['errors']} errors, concurrency {report['concurrency']}, "
        f"{report['n_candidates']} candidates x {report['n_recent']} recent | "
        f"p50 {report['p50_ms']:.2f} ms, p90 {report['p90_ms']:.2f} ms, "
        f"p99 {report['p99_ms']:.2f} ms, mean {report['mean_ms']:.2f} ms | "
        f"{report['throughput_rps']:.0f} req/s, {report['candidates_per_s']:.0f} candidates/s"
    )


async def bench_switch(
    target: str,
    user_ids: list[str],
    item_ids: list[str],
    switch: Callable[[], None],
    duration_s: float = 20.0,
    switch_at_s: float = 10.0,
    n_candidates: int = 200,
    n_recent: int = 100,
    concurrency: int = 8,
    seed: int = 0,
    token: str | None = None,
    tls_ca: Path | None = None,
) -> dict[str, Any]:
    """Closed-loop gRPC load; `switch()` (e.g. activating another release) runs at switch_at_s.

    Reports latency before the switch (steady state) and in the switch window: from the switch
    until one second after the first response that names the new release.
    """
    bodies = _make_requests(user_ids, item_ids, n_candidates, n_recent, 512, seed)
    records: list[tuple[float, float, str | None]] = []  # (start, latency, release or None)
    errors: list[str] = []
    t0 = perf_counter()
    switched_at: list[float] = []

    async with _rank_caller("grpc", target, concurrency, token, tls_ca) as call:

        async def worker(offset: int) -> None:
            k = offset
            while perf_counter() - t0 < duration_s:
                body = bodies[k % len(bodies)]
                k += concurrency
                start = perf_counter()
                try:
                    reply = await call(body)
                    records.append((start - t0, perf_counter() - start, reply.release))
                except grpc.aio.AioRpcError as exc:
                    errors.append(describe_error(exc))
                    records.append((start - t0, perf_counter() - start, None))

        async def switcher() -> None:
            await asyncio.sleep(switch_at_s)
            switched_at.append(perf_counter() - t0)
            await asyncio.to_thread(switch)

        await asyncio.gather(*(worker(i) for i in range(concurrency)), switcher())

    t_switch = switched_at[0]
    before = {r for s, _, r in records if s < t_switch and r}
    new = [s + lat for s, lat, r in records if r and r not in before]
    visible = min(new) if new else float("nan")
    window_end = (visible if new else t_switch) + 1.0

    def summary(rows: list[tuple[float, float, str | None]]) -> dict[str, float]:
        ms = sorted(lat * 1000 for _, lat, _ in rows)
        return {"n": len(ms), "p50_ms": _percentile(ms, 50), "p99_ms": _percentile(ms, 99)}

    warmup_s = min(1.0, t_switch / 2)  # the first moments of load are not steady state
    steady = summary([r for r in records if warmup_s <= r[0] < t_switch])
    window = summary([r for r in records if t_switch <= r[0] < window_end])
    after = summary([r for r in records if r[0] >= window_end])
    return {
        "transport": "grpc",
        "target": target,
        "concurrency": concurrency,
        "n_candidates": n_candidates,
        "n_recent": n_recent,
        "releases_seen": sorted({r for _, _, r in records if r}),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "switch_visible_after_s": visible - t_switch,
        "steady": steady,
        "switch_window": window,
        "after": after,
        "p99_ratio_window_vs_steady": window["p99_ms"] / steady["p99_ms"],
    }
