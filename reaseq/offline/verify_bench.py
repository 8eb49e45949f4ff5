"""Benchmark: what verifying a release down to its values costs (`reaseq bench-verify`).

Builds a synthetic release of the asked size and value format (random float16 vectors, and in
format 2 random gap buckets and generated flags; the model file is opaque bytes, which value
verification never parses), then times each check a release goes through:
sealing at publish (every value checked, digest computed), the embedded store's load-time check,
writing it into Redis, the publisher's read-back (`activate` runs the same), and the service's
own async check at load. Times are medians over `repeats` runs, one process, one Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from reaseq.core.codec import SIDE_DTYPE, VECTOR_DTYPE
from reaseq.core.contract import N_GAP_BUCKETS
from reaseq.core.keys import KeySchema
from reaseq.core.release import (
    DEFAULT_ITEM_VECTOR,
    ITEM_IDS,
    ITEM_VECTORS,
    MANIFEST_FILE,
    MODEL_FILE,
    USER_BEHAVIORS,
    USER_GAP_BUCKETS,
    USER_GENERATED,
    USER_IDS,
    USER_OFFSETS,
    ReleaseManifest,
    Snapshot,
    combine_hashes,
    sha256_bytes,
    sha256_file,
    snapshot_files,
)
from reaseq.core.values import verify_snapshot_values
from reaseq.offline.publish import RedisPublisher, seal


def synthetic_release(
    root: Path,
    n_items: int,
    n_users: int,
    behaviors: int,
    dim: int,
    seed: int = 0,
    value_format: int = 2,
    model: bytes | None = None,
    release: str | None = None,
) -> Path:
    """A complete release folder with random vectors and consistent hashes; `model` defaults to
    opaque bytes (tests that serve the release pass a real ONNX model)."""
    rng = np.random.default_rng(seed)
    release = release or f"bench-verify-{n_items}-{n_users}"
    folder = root / release
    (folder / "features").mkdir(parents=True)
    model = rng.bytes(64 * 1024) if model is None else model
    (folder / MODEL_FILE).write_bytes(model)
    items = rng.standard_normal((n_items, dim)).astype(VECTOR_DTYPE)
    rows = rng.integers(0, n_items, size=n_users * behaviors)
    arrays = {
        ITEM_IDS: np.array([f"i{n:07d}" for n in range(n_items)]),
        ITEM_VECTORS: items,
        DEFAULT_ITEM_VECTOR: items.astype(np.float32).mean(0).astype(VECTOR_DTYPE),
        USER_IDS: np.array([f"u{n:07d}" for n in range(n_users)]),
        USER_OFFSETS: np.arange(n_users + 1, dtype=np.int64) * behaviors,
        USER_BEHAVIORS: items[rows],
    }
    if value_format == 2:
        arrays[USER_GAP_BUCKETS] = rng.integers(0, N_GAP_BUCKETS, len(rows), dtype=SIDE_DTYPE)
        arrays[USER_GENERATED] = (rng.random(len(rows)) < 0.25).astype(SIDE_DTYPE)
    for name, array in arrays.items():
        np.save(folder / name, array, allow_pickle=False)
    files = {MODEL_FILE: sha256_bytes(model)}
    files |= {name: sha256_file(folder / name) for name in snapshot_files(value_format)}
    manifest = ReleaseManifest(
        release=release,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        model_version="bench",
        feature_version="bench",
        vector_dim=dim,
        value_format=value_format,
        max_behaviors=behaviors,
        n_items=n_items,
        n_users=n_users,
        n_behaviors=n_users * behaviors,
        model_sha256=files[MODEL_FILE],
        snapshot_sha256=combine_hashes([files[n] for n in snapshot_files(value_format)]),
        files=files,
        code_version="bench",
        dataset="bench",
        features="bench",
    )
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json())
    return folder


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(
    redis_url: str,
    n_items: int = 100_000,
    n_users: int = 10_000,
    behaviors: int = 50,
    dim: int = 96,
    repeats: int = 3,
    namespace: str = "reaseq-bench-verify",
    value_format: int = 2,
) -> dict[str, float]:
    """Seconds per stage (medians) for one synthetic release; its keys are removed afterwards."""
    from reaseq.service.releases import RedisReleaseSource, make_redis_client

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_release(
            Path(tmp), n_items, n_users, behaviors, dim, value_format=value_format
        )
        out["seal_s"] = _median_s(lambda: seal(folder), repeats)
        manifest = seal(folder)
        snapshot = Snapshot.open(folder, value_format)
        out["embedded_verify_s"] = _median_s(
            lambda: verify_snapshot_values(snapshot, manifest), repeats
        )
        keys = KeySchema(namespace)
        client = redis.Redis.from_url(redis_url)
        publisher = RedisPublisher(client, keys)
        try:
            started = time.perf_counter()
            publisher.publish(folder, activate=False, keep=10)
            out["redis_publish_s"] = time.perf_counter() - started
            out["redis_activate_verify_s"] = _median_s(
                lambda: publisher.verify(manifest.release), repeats
            )

            async def service_check() -> float:
                source = RedisReleaseSource(make_redis_client(redis_url, None, 5.0), keys)
                try:
                    times = []
                    for _ in range(repeats):
                        started = time.perf_counter()
                        await source.verify_values(manifest)
                        times.append(time.perf_counter() - started)
                    return statistics.median(times)
                finally:
                    await source.close()

            out["service_verify_s"] = asyncio.run(service_check())
            out["redis_used_mb"] = client.info("memory")["used_memory"] / 2**20
        finally:
            publisher.delete_release_keys(manifest.release)
            client.zrem(keys.releases, manifest.release)
            client.close()
    return out
