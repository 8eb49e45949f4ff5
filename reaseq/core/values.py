"""A release's feature values, checked down to the last one: canonical names, digest, sanity.

Hashing the snapshot files proves the files are intact; it says nothing about what a store holds.
So every value of a release has a canonical name (`default-item`, `item:<id>`, `user:<id>`,
`knowledge:<id>` where the release carries MAKR knowledge, the
Redis key without its `<ns>:<release>:` prefix), and `ValueVerifier` is fed the values in
canonical order (names sorted as UTF-8 bytes) from wherever they live — the snapshot at publish
time, Redis or the snapshot at load time — and checks each value's length, header (in the
release's value format), finiteness and side inputs (gap bucket range, 0/1 generated flags), the
counts, and one sha256 over all of them against the digest the publisher recorded in the
manifest. A release that fails is refused; the service keeps serving the old one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

from reaseq.core.codec import (
    VECTOR_DTYPE,
    decode_behaviors,
    encode_behaviors,
    encode_vector,
)
from reaseq.core.release import (
    MAX_KNOWLEDGE_CHARS,
    ReleaseCheckError,
    ReleaseManifest,
    Snapshot,
)

DEFAULT_ITEM = b"default-item"
ITEM_PREFIX = b"item:"
KNOWLEDGE_PREFIX = b"knowledge:"  # UTF-8 text, only for items the release has knowledge of
USER_PREFIX = b"user:"
VALUE_PREFIXES = (ITEM_PREFIX, KNOWLEDGE_PREFIX, USER_PREFIX)
_LENGTH = struct.Struct("<Q")
T = TypeVar("T")


def item_name(item_id: str) -> bytes:
    return ITEM_PREFIX + item_id.encode()


def knowledge_name(item_id: str) -> bytes:
    return KNOWLEDGE_PREFIX + item_id.encode()


def user_name(user_id: str) -> bytes:
    return USER_PREFIX + user_id.encode()


def is_value_name(name: bytes) -> bool:
    """True for the names the digest covers (manifest and model are checked by their own hashes)."""
    return name == DEFAULT_ITEM or name.startswith(VALUE_PREFIXES)


def snapshot_values(snapshot: Snapshot) -> Iterator[tuple[bytes, bytes]]:
    """Every value of a snapshot as (canonical name, encoded bytes), in canonical order; user
    values in the snapshot's value format."""
    entries: list[tuple[bytes, int]] = [(DEFAULT_ITEM, -1)]
    entries += [(item_name(i), row) for row, i in enumerate(snapshot.item_ids.tolist())]
    n_items = len(snapshot.item_ids)
    entries += [(user_name(u), n_items + row) for row, u in enumerate(snapshot.user_ids.tolist())]
    first_knowledge = n_items + len(snapshot.user_ids)  # indexes past the users: knowledge rows
    knowledge: list[str] = []
    if snapshot.item_knowledge is not None:
        knowledge = snapshot.item_knowledge.tolist()
        item_ids = snapshot.item_ids.tolist()
        entries += [
            (knowledge_name(i), first_knowledge + row)
            for row, (i, text) in enumerate(zip(item_ids, knowledge, strict=True))
            if text
        ]
    entries.sort()
    for name, index in entries:
        if index < 0:
            yield name, encode_vector(snapshot.default_item_vector)
        elif index >= first_knowledge:
            yield name, knowledge[index - first_knowledge].encode()
        elif index < n_items:
            yield name, encode_vector(snapshot.item_vectors[index])
        else:
            sequence = snapshot.sequence_of(index - n_items)
            yield name, encode_behaviors(*sequence, value_format=snapshot.value_format)


def values_digest(values: Iterable[tuple[bytes, bytes]]) -> str:
    """sha256 over (name, value) pairs, each length-prefixed so no two releases collide."""
    digest = hashlib.sha256()
    for name, value in values:
        digest.update(_LENGTH.pack(len(name)) + name + _LENGTH.pack(len(value)))
        digest.update(value)
    return digest.hexdigest()


class ValueVerifier:
    """Checks a release's values as they stream past in canonical order (bounded memory).

    `feed` batches of (name, value); `finish` raises `ReleaseCheckError` naming the first problem:
    a value of the wrong length or header (a user value of the other value format included), a
    NaN/Inf, a gap bucket out of range or a generated flag other than 0/1, names out of order (a
    key added or duplicated), wrong counts, or a digest that differs from the manifest's.
    """

    def __init__(self, manifest: ReleaseManifest, check_digest: bool = True) -> None:
        if check_digest and not manifest.values_sha256:
            raise ReleaseCheckError(
                f"release {manifest.release} records no values digest (published by an older "
                "version): publish it again"
            )
        self.manifest, self.check_digest = manifest, check_digest
        self.dim = manifest.vector_dim
        self._digest = hashlib.sha256()
        self._last: bytes | None = None
        self.counts = {"default": 0, "items": 0, "users": 0, "behaviors": 0, "knowledge": 0}

    def _fail(self, what: str) -> ReleaseCheckError:
        return ReleaseCheckError(f"release {self.manifest.release}: {what}")

    def feed(self, batch: list[tuple[bytes, bytes | None]] | list[tuple[bytes, bytes]]) -> None:
        vectors: list[bytes] = []
        for name, value in batch:
            shown = name.decode(errors="replace")[:80]
            if value is None:
                raise self._fail(f"value {shown} vanished while it was being verified")
            if self._last is not None and name <= self._last:
                raise self._fail(f"value names out of canonical order at {shown}")
            self._last = name
            self._digest.update(_LENGTH.pack(len(name)) + name + _LENGTH.pack(len(value)))
            self._digest.update(value)
            if name == DEFAULT_ITEM or name.startswith(ITEM_PREFIX):
                if len(value) != 2 * self.dim:
                    raise self._fail(
                        f"value {shown} has {len(value)} bytes, expected {2 * self.dim}"
                    )
                vectors.append(value)
                self.counts["default" if name == DEFAULT_ITEM else "items"] += 1
            elif name.startswith(USER_PREFIX):
                self._check_user(shown, value)
            elif name.startswith(KNOWLEDGE_PREFIX):
                self._check_knowledge(shown, value)
            else:
                raise self._fail(f"unexpected value {shown}")
        if vectors:
            flat = np.frombuffer(b"".join(vectors), dtype=VECTOR_DTYPE)
            if not np.isfinite(flat).all():
                bad = int(np.flatnonzero(~np.isfinite(flat))[0]) // self.dim
                raise self._fail(f"item vector #{bad} of a batch holds NaN or Inf")

    def _check_user(self, shown: str, value: bytes) -> None:
        try:
            behaviors = decode_behaviors(value, self.dim, self.manifest.value_format).vectors
        except ValueError as err:
            raise self._fail(f"value {shown} is not a valid behavior record: {err}") from None
        if len(behaviors) > self.manifest.max_behaviors:
            raise self._fail(
                f"value {shown} holds {len(behaviors)} behaviors, the release allows "
                f"{self.manifest.max_behaviors}"
            )
        if not np.isfinite(behaviors).all():
            raise self._fail(f"value {shown} holds NaN or Inf")
        self.counts["users"] += 1
        self.counts["behaviors"] += len(behaviors)

    def _check_knowledge(self, shown: str, value: bytes) -> None:
        try:
            text = value.decode()
        except UnicodeDecodeError:
            raise self._fail(f"value {shown} is not UTF-8 text") from None
        if not text or len(text) > MAX_KNOWLEDGE_CHARS:
            raise self._fail(f"value {shown} is empty or longer than {MAX_KNOWLEDGE_CHARS} chars")
        self.counts["knowledge"] += 1

    def finish(self) -> str:
        """Raise on the first problem; return the digest (what `publish` records)."""
        m, c = self.manifest, self.counts
        expected = {"default": 1, "items": m.n_items, "users": m.n_users}
        expected |= {"behaviors": m.n_behaviors, "knowledge": m.n_knowledge}
        for kind, n in expected.items():
            if c[kind] != n:
                raise self._fail(f"{c[kind]} {kind} values, manifest says {n}")
        digest = self._digest.hexdigest()
        if self.check_digest and digest != m.values_sha256:
            raise self._fail("values digest does not match the manifest (a value was changed)")
        return digest


def verify_snapshot_values(
    snapshot: Snapshot, manifest: ReleaseManifest, check_digest: bool = True, batch: int = 1000
) -> str:
    """Check every value of a snapshot; returns the values digest. `check_digest=False` is for
    the publisher, which computes the digest it is about to record."""
    verifier = ValueVerifier(manifest, check_digest)
    for chunk in batched(snapshot_values(snapshot), batch):
        verifier.feed(chunk)
    return verifier.finish()


def canonical_names(keys: Iterable[bytes], prefix: bytes) -> list[bytes]:
    """The value names among a release's store keys (prefix stripped), in canonical order."""
    names = (key[len(prefix) :] for key in keys if key.startswith(prefix))
    return sorted(name for name in names if is_value_name(name))


def batched(entries: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
