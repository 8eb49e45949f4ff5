"""How fast running instances follow the active pointer: move it, and watch each instance's
/readyz until it serves the release the pointer now names.

    reaseq bench-follow --target http://127.0.0.1:8101 --target http://127.0.0.1:8102

Per switch and instance, two times from the moment `release activate` returned: until /readyz
shows the instance has read the new pointer (its `detail` names it while the release loads), and
until it serves it. Their difference is the load; the first is what push saves over polling.
Pure client code: httpx and a callable that moves the pointer.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable
from time import perf_counter
from typing import Any

import httpx

READYZ_EVERY_S = 0.005  # how often each instance's /readyz is read while it switches


async def _follow_one(
    http: httpx.AsyncClient, target: str, release: str, timeout_s: float
) -> tuple[float | None, float | None]:
    """(seconds until `target` had read the pointer naming `release`, until it served it)."""
    started = perf_counter()
    seen = None
    while (now := perf_counter() - started) < timeout_s:
        try:
            body = (await http.get(f"{target}/readyz")).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        if body.get("release") == release:
            return (seen if seen is not None else now), now
        if seen is None and release in (body.get("detail") or ""):
            seen = now
        await asyncio.sleep(READYZ_EVERY_S)
    return seen, None


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "max_s": None}
    return {"p50_s": statistics.median(values), "max_s": max(values)}


async def bench_follow(
    targets: list[str],
    releases: tuple[str, str],
    activate: Callable[[str], None],
    switches: int = 10,
    pause_max_s: float = 2.0,
    timeout_s: float = 60.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Activate the two releases in turn, `switches` times, starting with `releases[1]`.

    A random pause (0..pause_max_s) comes before each switch, so a switch lands at a random
    point of each instance's poll cycle rather than just after the previous one was found."""
    rng = random.Random(seed)
    seen: dict[str, list[float]] = {t: [] for t in targets}
    served: dict[str, list[float]] = {t: [] for t in targets}
    missed = 0
    async with httpx.AsyncClient(timeout=5) as http:
        for i in range(switches):
            release = releases[(i + 1) % 2]
            await asyncio.sleep(rng.uniform(0, pause_max_s))
            await asyncio.to_thread(activate, release)
            times = await asyncio.gather(
                *(_follow_one(http, t, release, timeout_s) for t in targets)
            )
            for target, (seen_s, served_s) in zip(targets, times, strict=True):
                if served_s is None:
                    missed += 1
                    continue
                served[target].append(served_s)
                if seen_s is not None:
                    seen[target].append(seen_s)
    every_served = [s for values in served.values() for s in values]
    every_seen = [s for values in seen.values() for s in values]
    return {
        "targets": targets,
        "releases": list(releases),
        "switches": switches,
        "missed": missed,  # an instance that did not serve the new release within timeout_s
        "pointer_seen": _summary(every_seen),
        "served": _summary(every_served),
        "per_target": {
            t: {"pointer_seen": _summary(seen[t]), "served": _summary(served[t])} for t in targets
        },
    }
