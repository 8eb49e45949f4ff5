"""Release sources: where the service finds the active release and loads it whole.

A loaded release is a model backend and a feature view that were checked against the same manifest
(model hash, vector width, value format, counts), so the service never scores a new model on old
vectors, nor a model that takes the behavior side inputs on values that do not carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from reaseq.core import contract
from reaseq.core.codec import VECTOR_DTYPE
from reaseq.core.keys import KeySchema
from reaseq.core.redis_cluster import async_cluster_client, async_mget, is_cluster_url
from reaseq.core.release import (
    ACTIVE_FILE,
    HISTORY_FILE,
    IN_USE_TTL_S,
    MANIFEST_FILE,
    MODEL_FILE,
    ReleaseCheckError,
    ReleaseManifest,
    Snapshot,
    clear_in_use,
    manifest_problem,
    mark_in_use,
    read_manifest,
    sha256_bytes,
    verify_release_files,
)
from reaseq.core.values import ValueVerifier, batched, canonical_names, verify_snapshot_values
from reaseq.service.backend import ModelBackend
from reaseq.service.store import (
    STORE_ERRORS,
    EmbeddedFeatures,
    FeatureView,
    RedisFeatures,
    store_error,
)

VERIFY_BATCH = 1000  # keys per SCAN page / MGET while a release's values are verified

BackendFactory = Callable[[bytes], ModelBackend]  # model file bytes -> a ready backend


@dataclass
class LoadedRelease:
    manifest: ReleaseManifest
    model: ModelBackend
    features: FeatureView

    @property
    def versions(self) -> tuple[str, str, str]:
        m = self.manifest
        return m.release, m.model_version, m.feature_version

    in_flight: int = 0  # requests that started on this release and have not finished

    async def close(self) -> None:
        await self.model.close()
        await self.features.close()

    async def drain_and_close(self, timeout_s: float = 30.0) -> None:
        """After a switch: let requests that started here finish, then free the release."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self.close()


def parse_manifest(release: str, raw: bytes | str) -> ReleaseManifest:
    """A manifest that does not parse is a refused release, said in one line."""
    try:
        manifest = ReleaseManifest.model_validate_json(raw)
    except ValueError as err:
        raise ReleaseCheckError(f"release {release}: {manifest_problem(err)}") from None
    if manifest.release != release:
        raise ReleaseCheckError(f"release {release}: its manifest names {manifest.release}")
    return manifest


def fallback_order(history: list[str], complete: list[str]) -> list[str]:
    """Where to look when the named release is refused: the most recently activated kept
    releases first (they were vetted for serving), then the other complete ones, newest first
    (`complete` is oldest first)."""
    kept = set(complete)
    order = [r for r in dict.fromkeys(reversed(history)) if r in kept]
    return order + [r for r in reversed(complete) if r not in order]


def load_model(
    manifest: ReleaseManifest, model_bytes: bytes, make_backend: BackendFactory
) -> ModelBackend:
    """Hash first (never parse bytes the manifest does not vouch for), then widths and whether
    the model's inputs match the value format (side inputs exactly in format 2)."""
    if sha256_bytes(model_bytes) != manifest.model_sha256:
        raise ReleaseCheckError(f"release {manifest.release}: model hash does not match manifest")
    model = make_backend(model_bytes)
    if model.dim != manifest.vector_dim:
        raise ReleaseCheckError(
            f"release {manifest.release}: model takes D={model.dim}, features have "
            f"D={manifest.vector_dim}"
        )
    if model.side_inputs != (manifest.value_format == 2):
        takes = "takes" if model.side_inputs else "does not take"
        raise ReleaseCheckError(
            f"release {manifest.release}: the model {takes} the behavior side inputs "
            f"{', '.join(contract.SIDE_INPUT_NAMES)}, but the manifest says value format "
            f"{manifest.value_format} (side inputs exactly in format 2): re-export the release"
        )
    return model


class ReleaseSource(ABC):
    @abstractmethod
    async def active_release(self) -> str | None:
        """The id the active pointer names, or None when nothing is published."""

    @abstractmethod
    async def load(self, release: str, make_backend: BackendFactory) -> LoadedRelease:
        """Load and check a release; raise ReleaseCheckError if it must not be served."""

    @abstractmethod
    async def fallbacks(self) -> list[str]:
        """Kept releases to try, best first, when the pointer names one that is refused."""

    @abstractmethod
    async def mark_in_use(self, instance: str, releases: Iterable[str]) -> None:
        """Tell publishers' GC which releases this instance still serves from (the active one and
        any still draining after a switch); refreshed by polling, expires if the instance dies."""

    @abstractmethod
    async def clear_in_use(self, instance: str) -> None: ...

    async def close(self) -> None:
        """Close connections."""


class EmbeddedReleaseSource(ReleaseSource):
    """Releases as folders on disk; the pointer is the ACTIVE file (replaced atomically)."""

    def __init__(self, releases_dir: Path, verify_hashes: bool = True) -> None:
        self.releases_dir = releases_dir
        self.verify_hashes = verify_hashes

    async def active_release(self) -> str | None:
        pointer = self.releases_dir / ACTIVE_FILE
        try:
            text = await anyio.Path(pointer).read_text()
        except FileNotFoundError:
            return None
        return text.strip() or None

    async def mark_in_use(self, instance: str, releases: Iterable[str]) -> None:
        await anyio.to_thread.run_sync(mark_in_use, self.releases_dir, instance, list(releases))

    async def clear_in_use(self, instance: str) -> None:
        await anyio.to_thread.run_sync(clear_in_use, self.releases_dir, instance)

    def _fallbacks_sync(self) -> list[str]:
        history_file = self.releases_dir / HISTORY_FILE
        history = history_file.read_text().split() if history_file.exists() else []
        complete = []
        for folder in self.releases_dir.iterdir():
            if folder.name.startswith(".") or not (folder / MANIFEST_FILE).is_file():
                continue
            try:
                complete.append((read_manifest(folder).created_at, folder.name))
            except (OSError, ValueError):
                continue  # an unreadable manifest is no candidate
        return fallback_order(history, [name for _, name in sorted(complete)])

    async def fallbacks(self) -> list[str]:
        return await anyio.to_thread.run_sync(self._fallbacks_sync)

    def _load_sync(self, release: str, make_backend: BackendFactory) -> LoadedRelease:
        folder = self.releases_dir / release
        if not folder.is_dir():
            raise ReleaseCheckError(f"release {release} is named active but its folder is missing")
        try:
            manifest = parse_manifest(release, (folder / MANIFEST_FILE).read_bytes())
        except OSError as err:
            raise ReleaseCheckError(f"release {release}: {manifest_problem(err)}") from None
        snapshot = Snapshot.open(folder, manifest.value_format)
        snapshot.check_against(manifest)
        if self.verify_hashes:
            verify_release_files(folder, manifest)
            verify_snapshot_values(snapshot, manifest)
        model_bytes = (folder / MODEL_FILE).read_bytes()
        model = load_model(manifest, model_bytes, make_backend)
        return LoadedRelease(manifest, model, EmbeddedFeatures(snapshot, release))

    async def load(self, release: str, make_backend: BackendFactory) -> LoadedRelease:
        return await anyio.to_thread.run_sync(self._load_sync, release, make_backend)


class RedisReleaseSource(ReleaseSource):
    """Releases as key families in Redis; the pointer is `<ns>:active` (`{<ns>}:active` on a
    cluster, where value verification scans every master)."""

    def __init__(self, client: aioredis.Redis | AsyncRedisCluster, keys: KeySchema) -> None:
        self.client, self.keys = client, keys
        self.mget = async_mget(client)

    async def active_release(self) -> str | None:
        try:
            value = await self.client.get(self.keys.active)
        except STORE_ERRORS as err:
            raise store_error("cannot read the active release pointer", err) from err
        return value.decode(errors="replace") if value else None

    async def fallbacks(self) -> list[str]:
        try:
            history = await self.client.lrange(self.keys.history, 0, -1)
            complete = await self.client.zrange(self.keys.releases, 0, -1)
        except STORE_ERRORS as err:
            raise store_error("cannot list the kept releases", err) from err
        return fallback_order([r.decode() for r in history], [r.decode() for r in complete])

    async def mark_in_use(self, instance: str, releases: Iterable[str]) -> None:
        value = " ".join(sorted(releases))
        try:
            await self.client.set(self.keys.in_use(instance), value, ex=IN_USE_TTL_S)
        except STORE_ERRORS as err:
            raise store_error("cannot write the in-use marker", err) from err

    async def clear_in_use(self, instance: str) -> None:
        with contextlib.suppress(*STORE_ERRORS):  # else it expires by itself
            await self.client.delete(self.keys.in_use(instance))

    async def load(self, release: str, make_backend: BackendFactory) -> LoadedRelease:
        try:
            raw_manifest, model_bytes, default_item = await self.mget(
                [
                    self.keys.manifest(release),
                    self.keys.model(release),
                    self.keys.default_item(release),
                ]
            )
        except STORE_ERRORS as err:
            raise store_error(f"cannot read release {release}", err) from err
        if raw_manifest is None or model_bytes is None or default_item is None:
            raise ReleaseCheckError(f"release {release} is incomplete in Redis")
        manifest = parse_manifest(release, raw_manifest)
        await self.verify_values(manifest)  # before the model is even parsed
        model = await anyio.to_thread.run_sync(load_model, manifest, model_bytes, make_backend)
        default = np.frombuffer(default_item, dtype=VECTOR_DTYPE)
        features = RedisFeatures(
            self.client,
            self.keys,
            release,
            manifest.vector_dim,
            default,
            manifest.value_format,
            has_knowledge=manifest.n_knowledge > 0,
        )
        return LoadedRelease(manifest, model, features)

    async def verify_values(self, manifest: ReleaseManifest) -> None:
        """Every value of the release, read from Redis page by page: lengths, headers, NaN/Inf,
        counts, and the digest the publisher recorded; a key added, changed or lost is found."""
        release = manifest.release
        prefix = self.keys.prefix(release)
        verifier = ValueVerifier(manifest)
        # hashing and decoding run in a worker thread: requests keep being served meanwhile
        try:
            keys = [k async for k in self.client.scan_iter(match=prefix + "*", count=VERIFY_BATCH)]
            names = await anyio.to_thread.run_sync(canonical_names, keys, prefix.encode())
            for batch in batched(names, VERIFY_BATCH):
                values = await self.mget([prefix.encode() + n for n in batch])
                await anyio.to_thread.run_sync(verifier.feed, list(zip(batch, values, strict=True)))
        except STORE_ERRORS as err:
            raise store_error(f"cannot read release {release}", err) from err
        verifier.finish()

    async def close(self) -> None:
        await self.client.aclose()


def make_redis_client(
    url: str, password: str | None, timeout_s: float
) -> aioredis.Redis | AsyncRedisCluster:
    """Short timeouts: a Redis outage becomes a fast, clear error, and redis-py reconnects by
    itself on the next call once Redis is back (recovery without restart).

    Every command the service sends is an idempotent read or an overwrite, so a command that
    meets a closed connection (a pooled connection opened before a Redis restart) is retried
    once at once on a fresh connection. Timeouts are not retried: the deadline decides those.
    A `redis-cluster://` URL gets the cluster client, with the same timeouts and retry."""
    if is_cluster_url(url):
        return async_cluster_client(url, password, timeout_s)
    return aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
        health_check_interval=30,
    )
