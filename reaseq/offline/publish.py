"""Job `publish`: make an exported release available to the service and switch to it.

Both stores follow the same protocol, so an interrupted publish (even `kill -9`) never leaves the
active pointer naming something incomplete:

1. write every part of the release under its own name (a temp folder / its own key prefix);
2. verify what was written against the manifest's hashes;
3. only then mark it complete (rename the folder / add it to `<ns>:releases`) and, if asked,
   point `ACTIVE` / `<ns>:active` at it in one atomic step;
4. garbage-collect releases beyond the newest `keep`, never the active one.
A rerun finds leftovers of an interrupted run, removes them and publishes again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from reaseq.core.codec import encode_behaviors, encode_vector
from reaseq.core.keys import KeySchema
from reaseq.core.release import (
    ACTIVE_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ReleaseCheckError,
    ReleaseManifest,
    Snapshot,
    check_release_id,
    read_manifest,
    releases_in_use,
    verify_release_files,
    write_atomic,
)

HISTORY_FILE = "HISTORY"  # embedded: one activated release id per line, newest last


@dataclass
class ReleaseInfo:
    release: str
    created_at: str
    model_version: str
    feature_version: str
    active: bool


# --- embedded store: release folders -------------------------------------------------------


Step = Callable[[str], None]  # told about each step of a publish (progress lines, tests)


def _quiet(_: str) -> None:
    pass


class EmbeddedPublisher:
    def __init__(self, releases_dir: Path, step: Step = _quiet) -> None:
        self.dir, self.step = releases_dir, step
        self.dir.mkdir(parents=True, exist_ok=True)

    def active(self) -> str | None:
        pointer = self.dir / ACTIVE_FILE
        return pointer.read_text().strip() or None if pointer.exists() else None

    def complete(self) -> list[ReleaseManifest]:
        """Complete releases (folder renamed into place), oldest first."""
        found = []
        for folder in self.dir.iterdir():
            if (
                folder.is_dir()
                and not folder.name.startswith(".")
                and (folder / MANIFEST_FILE).exists()
            ):
                found.append(read_manifest(folder))
        return sorted(found, key=lambda m: (m.created_at, m.release))

    def publish(self, source: Path, activate: bool = True, keep: int = 3) -> str:
        manifest = read_manifest(source)
        release = check_release_id(manifest.release)
        verify_release_files(source, manifest)
        final = self.dir / release
        if final.exists():
            verify_release_files(final, read_manifest(final))
        else:
            for stale in self.dir.glob(f".tmp-{release}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging = self.dir / f".tmp-{release}-{os.getpid()}"

            def copy(src: str, dst: str) -> None:
                shutil.copy2(src, dst)
                self.step(f"copied {Path(src).relative_to(source)}")

            shutil.copytree(source, staging, copy_function=copy)
            verify_release_files(staging, manifest)
            self.step("verified")
            os.replace(staging, final)
            self.step("complete")
        if activate:
            self.activate(release)
        self.gc(keep)
        return release

    def activate(self, release: str) -> None:
        folder = self.dir / check_release_id(release)
        if not (folder / MANIFEST_FILE).exists():
            raise ReleaseCheckError(f"release {release} is not a complete release in {self.dir}")
        verify_release_files(folder, read_manifest(folder))
        write_atomic(self.dir / ACTIVE_FILE, release.encode())
        with (self.dir / HISTORY_FILE).open("a") as fh:
            fh.write(release + "\n")
        self.step(f"activated {release}")

    def history(self) -> list[str]:
        path = self.dir / HISTORY_FILE
        return path.read_text().split() if path.exists() else []

    def in_use(self) -> set[str]:
        return releases_in_use(self.dir)

    def gc(self, keep: int) -> list[str]:
        """Remove all but the newest `keep` releases; never the active one or one in use."""
        protected = {self.active(), *self.in_use()}
        complete = [m.release for m in self.complete()]
        removable = [r for r in complete[: max(len(complete) - keep, 0)] if r not in protected]
        for release in removable:
            shutil.rmtree(self.dir / release)
        return removable


# --- Redis store: key families under <ns>:<release>: ---------------------------------------


def iter_release_values(source: Path, keys: KeySchema, release: str) -> Iterator[tuple[str, bytes]]:
    """Every key and value of a release, in a fixed order (used to write and to verify)."""
    snapshot = Snapshot.open(source)
    yield keys.model(release), (source / MODEL_FILE).read_bytes()
    yield keys.default_item(release), encode_vector(snapshot.default_item_vector)
    for item_id, vector in zip(snapshot.item_ids.tolist(), snapshot.item_vectors, strict=True):
        yield keys.item(release, item_id), encode_vector(vector)
    for row, user_id in enumerate(snapshot.user_ids.tolist()):
        yield keys.user(release, user_id), encode_behaviors(np.asarray(snapshot.behaviors_of(row)))


def _batches(items: Iterator[tuple[str, bytes]], size: int) -> Iterator[list[tuple[str, bytes]]]:
    batch: list[tuple[str, bytes]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class RedisPublisher:
    def __init__(
        self, client: redis.Redis, keys: KeySchema, step: Step = _quiet, batch_size: int = 500
    ) -> None:
        self.client, self.keys, self.step = client, keys, step
        self.batch_size = batch_size  # keys per pipelined write / MGET read-back

    def active(self) -> str | None:
        value = self.client.get(self.keys.active)
        return value.decode() if value else None

    def complete(self) -> list[ReleaseManifest]:
        names = [r.decode() for r in self.client.zrange(self.keys.releases, 0, -1)]
        raw = self.client.mget([self.keys.manifest(r) for r in names]) if names else []
        return [ReleaseManifest.model_validate_json(m) for m in raw if m is not None]

    def delete_release_keys(self, release: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=self.keys.prefix(release) + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += self.client.unlink(*batch)
                batch = []
        if batch:
            deleted += self.client.unlink(*batch)
        return deleted

    def publish(self, source: Path, activate: bool = True, keep: int = 3) -> str:
        manifest = read_manifest(source)
        release = check_release_id(manifest.release)
        verify_release_files(source, manifest)
        if self.client.zscore(self.keys.releases, release) is None:
            self.delete_release_keys(release)  # leftovers of an interrupted publish
            written, n_keys = hashlib.sha256(), 0
            values = iter_release_values(source, self.keys, release)
            for batch in _batches(values, self.batch_size):
                pipe = self.client.pipeline(transaction=False)
                for key, value in batch:
                    pipe.set(key, value)
                    written.update(value)
                pipe.execute()
                n_keys += len(batch)
                self.step(f"wrote {n_keys} keys")
            self._verify(source, release, written.hexdigest())
            self.step("verified")
            self.client.set(self.keys.manifest(release), manifest.model_dump_json())
            score = dt.datetime.fromisoformat(manifest.created_at).timestamp()
            self.client.zadd(self.keys.releases, {release: score})
            self.step("complete")
        if activate:
            self.activate(release)
        self.gc(keep)
        return release

    def _verify(self, source: Path, release: str, expected: str) -> None:
        """Read everything back and compare with what was written (hash over all values)."""
        readback = hashlib.sha256()
        for batch in _batches(iter_release_values(source, self.keys, release), self.batch_size):
            for (key, _), value in zip(batch, self.client.mget([k for k, _ in batch]), strict=True):
                if value is None:
                    raise ReleaseCheckError(f"release {release}: {key} missing after write")
                readback.update(value)
        if readback.hexdigest() != expected:
            raise ReleaseCheckError(
                f"release {release}: values read back differ from those written"
            )

    def activate(self, release: str) -> None:
        if self.client.zscore(self.keys.releases, release) is None:
            raise ReleaseCheckError(f"release {release} is not a complete release in Redis")
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.active, release)
        pipe.rpush(self.keys.history, release)
        pipe.execute()
        self.step(f"activated {release}")

    def history(self) -> list[str]:
        return [r.decode() for r in self.client.lrange(self.keys.history, 0, -1)]

    def in_use(self) -> set[str]:
        """Releases held by running service instances (markers with a TTL)."""
        names = list(self.client.scan_iter(match=self.keys.in_use_pattern, count=1000))
        values = self.client.mget(names) if names else []
        return {release for v in values if v for release in v.decode().split()}

    def gc(self, keep: int) -> list[str]:
        """Remove all but the newest `keep` releases; never the active one or one in use."""
        protected = {self.active(), *self.in_use()}
        complete = [r.decode() for r in self.client.zrange(self.keys.releases, 0, -1)]
        removable = [r for r in complete[: max(len(complete) - keep, 0)] if r not in protected]
        for release in removable:
            self.client.zrem(self.keys.releases, release)  # first: no longer complete
            self.delete_release_keys(release)
        return removable


def rollback_target(history: list[str], active: str | None, available: set[str]) -> str:
    """The most recent previously active release that is still kept."""
    for release in reversed(history):
        if release != active and release in available:
            return release
    raise ReleaseCheckError("no earlier release is kept to roll back to")


def describe(publisher: EmbeddedPublisher | RedisPublisher) -> list[ReleaseInfo]:
    active = publisher.active()
    return [
        ReleaseInfo(
            m.release, m.created_at, m.model_version, m.feature_version, m.release == active
        )
        for m in publisher.complete()
    ]
