"""Load across a live release switch, shared by the switch tests of each store: clients rank in a
loop while a release is published, until the new one has answered for a while."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from reaseq.service.query import RankQuery, RankResult
from reaseq.service.ranking import Ranker

Span = tuple[float, float, str]  # (started, ended, release that answered)


async def rank_across_switch(
    ranker: Ranker,
    query: RankQuery,
    publish: Callable[[], object],
    new_release: str = "second-release",
    clients: int = 4,
) -> tuple[list[RankResult], list[Span], list[Exception]]:
    """`clients` loops rank `query` while `publish()` runs in a thread, until `new_release` has
    answered for 0.3 s (bounded, so a bug cannot hang CI): (results, spans, errors)."""
    results: list[RankResult] = []
    spans: list[Span] = []
    errors: list[Exception] = []
    done = asyncio.Event()

    async def client() -> None:
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                results.append(await ranker.rank(query))
                spans.append((started, time.perf_counter(), results[-1].release))
            except Exception as err:
                errors.append(err)
            await asyncio.sleep(0.005)

    async def switch() -> None:
        await asyncio.sleep(0.1)
        await asyncio.to_thread(publish)
        deadline = time.monotonic() + 25
        while ranker.active_versions()[0] != new_release and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # keep the load on across and after the switch
        done.set()

    await asyncio.gather(*(client() for _ in range(clients)), switch())
    return results, spans, errors


def no_old_release_after_the_new(spans: list[Span], new_release: str = "second-release") -> bool:
    """Once a response came from the new release, no request started later used the old one."""
    first_new = min(end for _, end, release in spans if release == new_release)
    return all(release == new_release for start, _, release in spans if start > first_new)


async def rank_once_the_store_answers(
    ranker: Ranker, query: RankQuery, timeout_s: float
) -> RankResult:
    """Rank, retrying while the feature store is still unavailable (it is coming back)."""
    from reaseq.service.errors import FeatureStoreUnavailable

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await ranker.rank(query)
        except FeatureStoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
