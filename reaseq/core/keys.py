"""The Redis key schema, in one place.

Every key of a release lives under `<ns>:<release>:…`, so a release is written, verified, read and
garbage-collected as a unit, and the one `<ns>:active` pointer switches between whole releases.
No hash tags: keys spread over a Redis Cluster; cluster clients split MGETs per slot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySchema:
    namespace: str = "reaseq"

    @property
    def active(self) -> str:
        """String key: the id of the active release."""
        return f"{self.namespace}:active"

    @property
    def releases(self) -> str:
        """Sorted set: complete, verified releases scored by publish time."""
        return f"{self.namespace}:releases"

    def in_use(self, instance: str) -> str:
        """String key with a TTL: the release a running service instance holds (GC skips it)."""
        return f"{self.namespace}:in-use:{instance}"

    @property
    def in_use_pattern(self) -> str:
        return f"{self.namespace}:in-use:*"

    @property
    def history(self) -> str:
        """List: activated release ids, newest last (rollback reads it)."""
        return f"{self.namespace}:history"

    def prefix(self, release: str) -> str:
        return f"{self.namespace}:{release}:"

    def manifest(self, release: str) -> str:
        return f"{self.namespace}:{release}:manifest"

    def model(self, release: str) -> str:
        return f"{self.namespace}:{release}:model"

    def default_item(self, release: str) -> str:
        return f"{self.namespace}:{release}:default-item"

    def item(self, release: str, item_id: str) -> str:
        return f"{self.namespace}:{release}:item:{item_id}"

    def knowledge(self, release: str, item_id: str) -> str:
        """MAKR knowledge text of an item (explanations); only in releases that carry it."""
        return f"{self.namespace}:{release}:knowledge:{item_id}"

    def user(self, release: str, user_id: str) -> str:
        return f"{self.namespace}:{release}:user:{user_id}"
