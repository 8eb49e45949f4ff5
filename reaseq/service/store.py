"""Feature stores: where a release's item vectors and user behavior sequences are read from.

One interface, two backends: `EmbeddedFeatures` serves a release's snapshot files from memory-mapped
arrays in-process (no server at all); `RedisFeatures` reads the same values from Redis. Either way
one request's reads are one round trip: the user's behaviors and every item vector it needs.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reaseq.core.codec import decode_behaviors, decode_vectors
from reaseq.core.keys import KeySchema
from reaseq.core.release import Snapshot
from reaseq.service.errors import CorruptFeatures, FeatureStoreUnavailable
from reaseq.service.logs import log_throttled


def store_error(what: str, err: BaseException) -> FeatureStoreUnavailable:
    """The caller learns what failed and why in plain words; the address and the exception go
    to the server log only."""
    log_throttled(what, "%s: %s: %s", what, type(err).__name__, err)
    if isinstance(err, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        why = "the feature store refused our credentials (check the Redis password)"
    elif isinstance(err, RedisTimeoutError | TimeoutError):
        why = "the feature store did not answer in time"
    elif isinstance(err, RedisConnectionError | OSError):
        why = "the feature store is unreachable"
    else:
        why = "the feature store answered with an error"
    return FeatureStoreUnavailable(f"{what}: {why}")


@dataclass
class FetchedFeatures:
    behaviors: np.ndarray  # float32 [L, D]: the user's published behaviors, oldest first
    user_found: bool
    items: np.ndarray  # float32 [K, D]: vectors of the requested items; zeros where not found
    items_found: np.ndarray  # bool [K]


class FeatureView(ABC):
    """The features of one release."""

    dim: int
    default_item: np.ndarray  # float32 [D]: the vector an unknown candidate is scored with

    @abstractmethod
    async def fetch(self, user_id: str, item_ids: list[str]) -> FetchedFeatures: ...

    async def ping(self) -> None:
        """Raise FeatureStoreUnavailable when the store cannot serve reads."""

    async def close(self) -> None:
        """Release what the view holds (the store client itself is shared and closed elsewhere)."""


class EmbeddedFeatures(FeatureView):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.dim = snapshot.dim
        self.default_item = snapshot.default_item_vector.astype(np.float32)
        self._item_rows = {item_id: row for row, item_id in enumerate(snapshot.item_ids.tolist())}
        self._user_rows = {user_id: row for row, user_id in enumerate(snapshot.user_ids.tolist())}

    async def fetch(self, user_id: str, item_ids: list[str]) -> FetchedFeatures:
        user_row = self._user_rows.get(user_id)
        if user_row is None:
            behaviors = np.zeros((0, self.dim), dtype=np.float32)
        else:
            behaviors = np.asarray(self.snapshot.behaviors_of(user_row), dtype=np.float32)
        rows = np.array([self._item_rows.get(i, -1) for i in item_ids], dtype=np.int64)
        found = rows >= 0
        items = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        if found.any():
            items[found] = self.snapshot.item_vectors[rows[found]]
        return FetchedFeatures(behaviors, user_row is not None, items, found)


class RedisFeatures(FeatureView):
    """Reads one release's keys; a single MGET per request (user key + item keys)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        release: str,
        dim: int,
        default_item: np.ndarray,
    ) -> None:
        self.client, self.keys, self.release = client, keys, release
        self.dim = dim
        self.default_item = default_item.astype(np.float32)

    async def fetch(self, user_id: str, item_ids: list[str]) -> FetchedFeatures:
        names = [self.keys.user(self.release, user_id)]
        names += [self.keys.item(self.release, item_id) for item_id in item_ids]
        try:
            values = await self.client.mget(names)
        except (RedisError, OSError, TimeoutError) as err:
            raise store_error("reading features failed", err) from err
        user_value = values[0]
        try:
            if user_value is None:
                behaviors = np.zeros((0, self.dim), dtype=np.float32)
            else:
                behaviors = decode_behaviors(user_value, self.dim)
            items, found = decode_vectors(values[1:], self.dim)
        except (ValueError, struct.error) as err:
            raise self._corrupt(str(err)) from None
        if not (np.isfinite(behaviors).all() and np.isfinite(items).all()):
            raise self._corrupt("a stored vector holds NaN or Inf")
        return FetchedFeatures(behaviors, user_value is not None, items, found)

    def _corrupt(self, why: str) -> CorruptFeatures:
        """A value changed in Redis after the release was verified: an error, never a score."""
        log_throttled(
            f"corrupt:{self.release}", "corrupt value in release %s: %s", self.release, why
        )
        return CorruptFeatures(
            f"release {self.release} holds a corrupt feature value ({why}); republish it"
        )

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError, TimeoutError) as err:
            raise store_error("readiness check failed", err) from err
