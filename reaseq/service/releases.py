"""Release sources: where the service finds the active release and loads it whole.

A loaded release is a model backend and a feature view that were checked against the same manifest
(model hash, vector width, value format, counts), so the service never scores a new model on old
vectors, nor a model that takes the behavior side inputs on values that do not carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

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
from reaseq.service import metrics
from reaseq.service.backend import ModelBackend
from reaseq.service.store import (
    STORE_ERRORS,
    EmbeddedFeatures,
    FeatureView,
    RedisFeatures,
    store_error,
)

log = logging.getLogger(__name__)

VERIFY_BATCH = 1000  # keys per SCAN page / MGET while a release's values are verified
# pointer push (Redis keyspace notifications); polling stays the fallback throughout
PUSH_EVENTS = "K$"  # notify-keyspace-events flags it needs: keyspace channels, string commands
PUSH_BACKOFF_FIRST_S = 0.1  # wait before the first resubscribe attempt, doubled per failure ...
PUSH_BACKOFF_MAX_S = 5.0  # ... up to this: an outage costs a few attempts, never a busy loop
PUSH_PING_S = 5.0  # a PING on a quiet subscription this often; two unanswered drop the connection
PUSH_RECHECK_S = 60.0  # how often a server that publishes no notifications is asked again

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

    async def watch_pointer(self, moved: Callable[[], None]) -> None:
        """Call `moved` whenever the pointer may have moved, until cancelled: a push that spares
        the wait for the next poll. Sources that cannot push return at once (polling only)."""

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
    cluster, where value verification scans every master).

    With a `push_client`, `watch_pointer` subscribes to the pointer's keyspace channel on a
    connection of its own; `configure_server` lets it turn the server's notifications on."""

    def __init__(
        self,
        client: aioredis.Redis | AsyncRedisCluster,
        keys: KeySchema,
        push_client: aioredis.Redis | None = None,
        configure_server: bool = False,
    ) -> None:
        self.client, self.keys = client, keys
        self.mget = async_mget(client)
        self.push_client, self.configure_server = push_client, configure_server
        self._said: set[str] = set()  # push problems already logged (each once per process)

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

    # --- pointer push ----------------------------------------------------------------------

    @property
    def pointer_channel(self) -> str:
        """The keyspace channel Redis publishes a SET of the pointer on."""
        client = self.push_client or self.client
        db = client.connection_pool.connection_kwargs.get("db", 0)
        return f"__keyspace@{db}__:{self.keys.active}"

    async def watch_pointer(self, moved: Callable[[], None]) -> None:
        """Subscribe, call `moved` on each notification, and resubscribe with backoff whenever the
        connection fails (a Redis restart included). Each (re)subscription calls `moved` once too:
        a change made while unsubscribed was never pushed."""
        if self.push_client is None:
            return
        wait, lost = PUSH_BACKOFF_FIRST_S, False
        try:
            while True:
                try:
                    if not await self._notifications_on():
                        await asyncio.sleep(PUSH_RECHECK_S)
                        continue
                    async with self.push_client.pubsub() as pubsub:
                        await pubsub.subscribe(self.pointer_channel)
                        metrics.RELEASE_PUSH_SUBSCRIBED.set(1)
                        again = " again" if lost else ""
                        log.info("release push: subscribed%s to %s", again, self.pointer_channel)
                        wait, lost = PUSH_BACKOFF_FIRST_S, False
                        moved()
                        await self._listen(pubsub, moved)
                except ResponseError as err:  # refused (an ACL without channel rights, say)
                    metrics.RELEASE_PUSH_SUBSCRIBED.set(0)
                    self._once("refused", "release push refused by Redis (%s); polling only", err)
                    await asyncio.sleep(PUSH_RECHECK_S)
                except (RedisError, OSError, TimeoutError) as err:
                    metrics.RELEASE_PUSH_SUBSCRIBED.set(0)
                    if not lost:
                        log.warning(
                            "release push: no subscription (%s); polling meanwhile, "
                            "resubscribing with backoff",
                            str(err) or type(err).__name__,
                        )
                    lost = True
                    log.debug("release push: next attempt in %.1f s", wait)
                    await asyncio.sleep(wait)
                    wait = min(2 * wait, PUSH_BACKOFF_MAX_S)
        finally:
            metrics.RELEASE_PUSH_SUBSCRIBED.set(0)

    async def _listen(self, pubsub: PubSub, moved: Callable[[], None]) -> None:
        """Until the connection fails. A quiet subscription is PINGed, and one that answers
        nothing for two PING intervals is dropped: a half-open TCP connection raises no error."""
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=PUSH_PING_S)
            now = loop.time()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    moved()
            if now - heard >= 2 * PUSH_PING_S:
                raise TimeoutError(f"the subscription answered nothing for {now - heard:.0f} s")
            if now - pinged >= PUSH_PING_S:
                await pubsub.ping()
                pinged = now

    async def _notifications_on(self) -> bool:
        """Whether the server publishes SETs of the pointer. Only with `configure_server` does
        the service add the missing flags; otherwise it says so once and polls."""
        assert self.push_client is not None
        try:
            config = await self.push_client.config_get("notify-keyspace-events")
        except ResponseError as err:  # CONFIG disabled or renamed (managed Redis): cannot tell
            self._once(
                "config-get",
                "release push: cannot read notify-keyspace-events (%s); subscribing anyway, "
                "polling stays the fallback",
                err,
            )
            return True
        flags = str(next(iter(config.values()), ""))
        have = set(flags) | (set("$") if "A" in flags else set())
        missing = "".join(f for f in PUSH_EVENTS if f not in have)
        if not missing:
            return True
        if not self.configure_server:
            self._once(
                "off",
                "release push: Redis publishes no keyspace notifications of the pointer "
                "(notify-keyspace-events is %r, needs %r); polling only. Set it in the server's "
                "config, or let the service set it: REASEQ_RELEASE_PUSH_CONFIGURE_SERVER=true",
                flags,
                PUSH_EVENTS,
            )
            return False
        try:
            await self.push_client.config_set("notify-keyspace-events", flags + missing)
        except ResponseError as err:
            self._once("config-set", "release push: cannot set notify-keyspace-events (%s)", err)
            return False
        log.info("release push: set the server's notify-keyspace-events to %r", flags + missing)
        return True

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    async def close(self) -> None:
        await self.client.aclose()
        if self.push_client is not None:
            await self.push_client.aclose()


def make_push_client(url: str, password: str | None, timeout_s: float) -> aioredis.Redis:
    """The pointer subscription's own client: no retries and no health checks of redis-py's,
    so every failure reaches `watch_pointer`, which resubscribes (and checks the server's
    notification config again, a restarted server may have lost it) and PINGs itself."""
    return aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=0),
        health_check_interval=0,
    )


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
