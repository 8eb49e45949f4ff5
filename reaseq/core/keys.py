"""The Redis key schema, in one place.

Every key of a release lives under `<ns>:<release>:…`, so a release is written, verified, read and
garbage-collected as a unit, and the one `<ns>:active` pointer switches between whole releases.

Release keys carry no hash tag: over a Redis Cluster they spread across the masters, and reads are
split per node (core/redis_cluster.py). The namespace's control keys (active, releases, history,
in-use markers) must move together in one MULTI, which a cluster allows within one slot only, so
in cluster mode they share the hash tag `{<ns>}`: `{reaseq}:active`. Single-node names are
unchanged (`reaseq:active`), so existing stores keep working.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySchema:
    namespace: str = "reaseq"
    cluster: bool = False  # Redis Cluster: control keys in one slot (hash tag `{<ns>}`)

    def __post_init__(self) -> None:
        if self.cluster and ("{" in self.namespace or "}" in self.namespace):
            raise ValueError(
                f"redis namespace {self.namespace!r}: no braces with Redis Cluster (a hash tag "
                "in the namespace would put every release key in one slot)"
            )

    @property
    def control(self) -> str:
        """Prefix of the namespace-level keys: `<ns>`, or `{<ns>}` (one slot) in cluster mode."""
        return f"{{{self.namespace}}}" if self.cluster else self.namespace

    @property
    def active(self) -> str:
        """String key: the id of the active release."""
        return f"{self.control}:active"

    @property
    def releases(self) -> str:
        """Sorted set: complete, verified releases scored by publish time."""
        return f"{self.control}:releases"

    def in_use(self, instance: str) -> str:
        """String key with a TTL: the release a running service instance holds (GC skips it)."""
        return f"{self.control}:in-use:{instance}"

    @property
    def in_use_pattern(self) -> str:
        return f"{self.control}:in-use:*"

    @property
    def history(self) -> str:
        """List: activated release ids, newest last (rollback reads it)."""
        return f"{self.control}:history"

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
