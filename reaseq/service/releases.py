"""Release sources: where the service finds the active release and loads it whole.

A loaded release is a model backend and a feature view that were checked against the same manifest
(model hash, vector width, counts), so the service never scores a new model on old vectors.
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
from redis.exceptions import RedisError

from reaseq.core.codec import VECTOR_DTYPE
from reaseq.core.keys import KeySchema
from reaseq.core.release import (
    ACTIVE_FILE,
    IN_USE_TTL_S,
    MODEL_FILE,
    ReleaseCheckError,
    ReleaseManifest,
    Snapshot,
    clear_in_use,
    mark_in_use,
    read_manifest,
    sha256_bytes,
    verify_release_files,
)
from reaseq.service.backend import ModelBackend
from reaseq.service.errors import FeatureStoreUnavailable
from reaseq.service.store import EmbeddedFeatures, FeatureView, RedisFeatures

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


def load_model(
    manifest: ReleaseManifest, model_bytes: bytes, make_backend: BackendFactory
) -> ModelBackend:
    """Hash first (never parse bytes the manifest does not vouch for), then widths."""
    if sha256_bytes(model_bytes) != manifest.model_sha256:
        raise ReleaseCheckError(f"release {manifest.release}: model hash does not match manifest")
    model = make_backend(model_bytes)
    if model.dim != manifest.vector_dim:
        raise ReleaseCheckError(
            f"release {manifest.release}: model takes D={model.dim}, features have "
            f"D={manifest.vector_dim}"
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

    def _load_sync(self, release: str, make_backend: BackendFactory) -> LoadedRelease:
        folder = self.releases_dir / release
        if not folder.is_dir():
            raise ReleaseCheckError(f"release {release} is named active but {folder} is missing")
        manifest = read_manifest(folder)
        if self.verify_hashes:
            verify_release_files(folder, manifest)
        model_bytes = (folder / MODEL_FILE).read_bytes()
        model = load_model(manifest, model_bytes, make_backend)
        snapshot = Snapshot.open(folder)
        snapshot.check_against(manifest)
        return LoadedRelease(manifest, model, EmbeddedFeatures(snapshot))

    async def load(self, release: str, make_backend: BackendFactory) -> LoadedRelease:
        return await anyio.to_thread.run_sync(self._load_sync, release, make_backend)


class RedisReleaseSource(ReleaseSource):
    """Releases as key families in Redis; the pointer is `<ns>:active`."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema) -> None:
        self.client, self.keys = client, keys

    async def active_release(self) -> str | None:
        try:
            value = await self.client.get(self.keys.active)
        except (RedisError, OSError, TimeoutError) as err:
            raise FeatureStoreUnavailable(f"cannot read the active release pointer: {err}") from err
        return value.decode() if value else None

    async def mark_in_use(self, instance: str, releases: Iterable[str]) -> None:
        value = " ".join(sorted(releases))
        try:
            await self.client.set(self.keys.in_use(instance), value, ex=IN_USE_TTL_S)
        except (RedisError, OSError, TimeoutError) as err:
            raise FeatureStoreUnavailable(f"cannot write the in-use marker: {err}") from err

    async def clear_in_use(self, instance: str) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # else it expires by itself
            await self.client.delete(self.keys.in_use(instance))

    async def load(self, release: str, make_backend: BackendFactory) -> LoadedRelease:
        try:
            raw_manifest, model_bytes, default_item = await self.client.mget(
                [
                    self.keys.manifest(release),
                    self.keys.model(release),
                    self.keys.default_item(release),
                ]
            )
        except (RedisError, OSError, TimeoutError) as err:
            raise FeatureStoreUnavailable(f"cannot read release {release}: {err}") from err
        if raw_manifest is None or model_bytes is None or default_item is None:
            raise ReleaseCheckError(f"release {release} is incomplete in Redis")
        manifest = ReleaseManifest.model_validate_json(raw_manifest)
        model = await anyio.to_thread.run_sync(load_model, manifest, model_bytes, make_backend)
        default = np.frombuffer(default_item, dtype=VECTOR_DTYPE)
        if default.shape != (manifest.vector_dim,):
            raise ReleaseCheckError(f"release {release}: default item vector has the wrong width")
        features = RedisFeatures(self.client, self.keys, release, manifest.vector_dim, default)
        return LoadedRelease(manifest, model, features)

    async def close(self) -> None:
        await self.client.aclose()


def make_redis_client(url: str, password: str | None, timeout_s: float) -> aioredis.Redis:
    """Short timeouts: a Redis outage becomes a fast, clear error, and redis-py reconnects by
    itself on the next call once Redis is back (recovery without restart)."""
    return aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
        health_check_interval=30,
    )
