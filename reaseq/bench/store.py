"""`reaseq bench-store`: the cost of one request's feature reads on single-node Redis and on a
Redis Cluster, through the service's own `RedisFeatures.fetch`.

One release is published to both stores (started here on loopback, or given by URL) by the
publisher the CLI uses; the service's release source then verifies it from each store (timed: a
cluster's verification scans every master) and times the same requests on both, interleaved
request by request, so load from anything else on the machine falls on both alike. Each request
is a user with published behaviors and `candidates` catalog items; the stores must answer every
request identically. A third row reads the cluster the way redis-py's `mget_nonatomic` does (one
MGET per slot), the cost the service's per-node reads avoid.
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reaseq.bench.local_redis import LocalRedisCluster, LocalRedisNode
from reaseq.core.redis_cluster import NodeReads, key_schema, sync_client
from reaseq.core.release import ReleaseManifest, Snapshot, read_manifest
from reaseq.offline.publish import RedisPublisher
from reaseq.service.releases import RedisReleaseSource, make_redis_client
from reaseq.service.store import FetchedFeatures, RedisFeatures

NAMESPACE = "bench-store"
PER_SLOT = "cluster, per slot"  # the same cluster read with one MGET per slot (mget_nonatomic)
TIMEOUT_S = 2.0  # generous: this measures latency, it does not test failure


@dataclass
class StoreTimes:
    store: str
    verify_s: float  # the service's load-time verification of every value
    fetch_ms: np.ndarray  # one entry per timed request

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.fetch_ms, q))

    def line(self) -> str:
        return (
            f"{self.store:<17} p50 {self.quantile(0.5):6.3f} ms  p95 {self.quantile(0.95):6.3f} ms"
            f"  p99 {self.quantile(0.99):6.3f} ms  mean {self.fetch_ms.mean():6.3f} ms"
            f"  (verify {self.verify_s:5.2f} s)"
        )


@dataclass
class StoreReport:
    release: str
    requests: int
    candidates: int
    single: StoreTimes
    cluster: StoreTimes
    per_slot: StoreTimes  # the cluster read as redis-py's mget_nonatomic does it

    def ratio(self, times: StoreTimes, q: float) -> float:
        return times.quantile(q) / self.single.quantile(q)

    def lines(self) -> list[str]:
        return [
            f"release {self.release}: {self.requests} requests x ({self.candidates} candidates "
            "+ 1 user), RedisFeatures.fetch, one at a time, stores interleaved",
            self.single.line(),
            self.cluster.line(),
            self.per_slot.line(),
            *(
                f"{times.store} / single: p50 {self.ratio(times, 0.5):.2f}x"
                f"  p95 {self.ratio(times, 0.95):.2f}x"
                for times in (self.cluster, self.per_slot)
            ),
        ]


@contextmanager
def local_stores(workdir: Path, masters: int) -> Iterator[tuple[str, str]]:
    """A single node and a cluster of `masters` on loopback, stopped on the way out."""
    with ExitStack() as stack:
        single = LocalRedisNode(workdir / "single").start()
        stack.callback(single.stop)
        cluster = LocalRedisCluster(workdir / "cluster", masters).start()
        stack.callback(cluster.stop)
        yield single.url, cluster.url


def requests(
    snapshot: Snapshot, n: int, candidates: int, seed: int = 0
) -> list[tuple[str, list[str]]]:
    """(user with published behaviors, `candidates` distinct catalog items) per request."""
    rng = np.random.default_rng(seed)
    lengths = snapshot.user_offsets[1:] - snapshot.user_offsets[:-1]
    users = snapshot.user_ids[lengths > 0]
    size = min(candidates, len(snapshot.item_ids))
    return [
        (
            str(rng.choice(users)),
            [str(i) for i in rng.choice(snapshot.item_ids, size=size, replace=False)],
        )
        for _ in range(n)
    ]


def same(a: FetchedFeatures, b: FetchedFeatures) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name))
        for name in ("behaviors", "gap_buckets", "generated", "items", "items_found")
    ) and (a.user_found == b.user_found)


async def _measure(
    urls: dict[str, str],
    manifest: ReleaseManifest,
    release_dir: Path,
    work: list[tuple[str, list[str]]],
    warmup: int,
) -> dict[str, StoreTimes]:
    views: dict[str, RedisFeatures] = {}
    verify_s: dict[str, float] = {}
    sources = []
    try:
        for store, url in urls.items():
            source = RedisReleaseSource(
                make_redis_client(url, None, TIMEOUT_S), key_schema(NAMESPACE, url)
            )
            sources.append(source)
            started = time.perf_counter()
            await source.verify_values(manifest)
            verify_s[store] = time.perf_counter() - started
            default = Snapshot.open(release_dir, manifest.value_format).default_item_vector
            views[store] = RedisFeatures(
                source.client,
                source.keys,
                manifest.release,
                manifest.vector_dim,
                np.asarray(default),
                manifest.value_format,
            )
            if isinstance(views[store].mget, NodeReads):  # the same reads as redis-py splits them
                per_slot = views[PER_SLOT] = copy.copy(views[store])
                per_slot.mget = NodeReads(source.client)
                per_slot.mget.scripted = False
                verify_s[PER_SLOT] = verify_s[store]
        times: dict[str, list[float]] = {store: [] for store in views}
        for index, (user, items) in enumerate(work[:warmup] + work):
            answers = {}
            for store, view in views.items():
                started = time.perf_counter()
                answers[store] = await view.fetch(user, items)
                if index >= warmup:
                    times[store].append((time.perf_counter() - started) * 1e3)
            first, *others = answers.values()
            if not all(same(first, other) for other in others):
                raise RuntimeError(f"the stores answer request {index} ({user}) differently")
    finally:
        for source in sources:
            await source.close()
    return {store: StoreTimes(store, verify_s[store], np.asarray(times[store])) for store in views}


def bench_store(
    release_dir: Path,
    requests_n: int = 2000,
    candidates: int = 200,
    warmup: int = 200,
    single_url: str | None = None,
    cluster_url: str | None = None,
    masters: int = 3,
    log: Callable[[str], None] = print,
) -> StoreReport:
    """Publish `release_dir` to both stores, then time `requests_n` fetches on each."""
    snapshot = Snapshot.open(release_dir, read_manifest(release_dir).value_format)
    work = requests(snapshot, requests_n, candidates)
    with ExitStack() as stack:
        if single_url is None or cluster_url is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-store-")))
            started_single, started_cluster = stack.enter_context(local_stores(workdir, masters))
            single_url = single_url or started_single
            cluster_url = cluster_url or started_cluster
            log(f"started redis-server {single_url} and a {masters}-master cluster {cluster_url}")
        urls = {"single": single_url, "cluster": cluster_url}
        for store, url in urls.items():
            client = sync_client(url, None, timeout_s=30)
            try:
                publisher = RedisPublisher(client, key_schema(NAMESPACE, url))
                started = time.perf_counter()
                release = publisher.publish(release_dir, keep=1)
                log(f"published to {store} in {time.perf_counter() - started:.1f} s")
                manifest = publisher.verify(release)  # as stored: with the values digest
            finally:
                client.close()
        measured = asyncio.run(_measure(urls, manifest, release_dir, work, warmup))
    return StoreReport(
        manifest.release,
        requests_n,
        candidates,
        measured["single"],
        measured["cluster"],
        measured[PER_SLOT],
    )
