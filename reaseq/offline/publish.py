"""Job `publish`: make an exported release available to the service and switch to it.

Both stores follow the same protocol, so an interrupted publish (even `kill -9`) never leaves the
active pointer naming something incomplete:

1. write every part of the release under its own name (a temp folder / its own key prefix);
2. verify what was written against the manifest's hashes;
3. only then mark it complete (rename the folder / add it to `<ns>:releases`) and, if asked,
   point `ACTIVE` / `<ns>:active` at it in one atomic step;
4. garbage-collect releases beyond the newest `keep`, never the active one.
A rerun finds leftovers of an interrupted run, removes them and publishes again.
User values are written and verified in the release's value format (RQU1 / RQU2, core/codec.py).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from reaseq.core.keys import KeySchema
from reaseq.core.redis_cluster import mget
from reaseq.core.release import (
    ACTIVE_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ReleaseCheckError,
    ReleaseManifest,
    Snapshot,
    check_release_id,
    manifest_problem,
    read_manifest,
    releases_in_use,
    sha256_bytes,
    verify_release_files,
    write_atomic,
)
from reaseq.core.values import (
    ValueVerifier,
    batched,
    canonical_names,
    snapshot_values,
    verify_snapshot_values,
)


@dataclass
class ReleaseInfo:
    release: str
    created_at: str
    model_version: str
    feature_version: str
    active: bool
    problem: str | None = None  # why the release cannot be read (its other fields are blank)


@dataclass
class Listed:
    """One kept release as a store lists it: its manifest, or why it could not be read."""

    release: str
    manifest: ReleaseManifest | None
    problem: str | None = None


def seal(source: Path) -> ReleaseManifest:
    """The export's manifest with the values digest this publish records, after checking every
    file hash and every value (lengths, headers, NaN/Inf): a bad export is never published."""
    manifest = read_manifest(source)
    check_release_id(manifest.release)
    verify_release_files(source, manifest)
    snapshot = Snapshot.open(source, manifest.value_format)
    snapshot.check_against(manifest)
    digest = verify_snapshot_values(snapshot, manifest, check_digest=False)
    if manifest.values_sha256 and manifest.values_sha256 != digest:
        raise ReleaseCheckError(f"release {manifest.release}: values digest does not match")
    return manifest.model_copy(update={"values_sha256": digest})


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

    def listing(self) -> list[Listed]:
        """Complete releases (folder renamed into place), oldest first; one whose manifest cannot
        be read is listed with the reason (first, so GC removes it first), never fatal."""
        found: list[Listed] = []
        for folder in self.dir.iterdir():
            if (
                not folder.is_dir()
                or folder.name.startswith(".")
                or not (folder / MANIFEST_FILE).exists()
            ):
                continue
            try:
                found.append(Listed(folder.name, read_manifest(folder)))
            except (OSError, ValueError) as err:
                found.append(Listed(folder.name, None, manifest_problem(err)))
        return sorted(found, key=lambda e: (e.manifest is not None, _created(e), e.release))

    def complete(self) -> list[ReleaseManifest]:
        return [e.manifest for e in self.listing() if e.manifest is not None]

    def publish(self, source: Path, activate: bool = True, keep: int = 3) -> str:
        manifest = seal(source)
        release = manifest.release
        final = self.dir / release
        if final.exists():
            if read_manifest(final).values_sha256 is None:  # published before value digests
                verify_release_files(final, manifest)
                write_atomic(final / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
                self.step("recorded the values digest")
            self.verify(release)
        else:
            for stale in self.dir.glob(f".tmp-{release}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging = self.dir / f".tmp-{release}-{os.getpid()}"

            def copy(src: str, dst: str) -> None:
                shutil.copy2(src, dst)
                self.step(f"copied {Path(src).relative_to(source)}")

            shutil.copytree(source, staging, copy_function=copy)
            write_atomic(staging / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
            verify_release_files(staging, manifest)
            verify_snapshot_values(Snapshot.open(staging, manifest.value_format), manifest)
            self.step("verified")
            os.replace(staging, final)
            self.step("complete")
        if activate:
            self.activate(release)
        self.gc(keep)
        return release

    def verify(self, release: str) -> ReleaseManifest:
        """Everything the service checks before serving: files, shapes, every value."""
        folder = self.dir / check_release_id(release)
        if not (folder / MANIFEST_FILE).exists():
            raise ReleaseCheckError(f"release {release} is not a complete release in {self.dir}")
        try:
            manifest = read_manifest(folder)
        except (OSError, ValueError) as err:
            raise ReleaseCheckError(f"release {release}: {manifest_problem(err)}") from None
        verify_release_files(folder, manifest)
        snapshot = Snapshot.open(folder, manifest.value_format)
        snapshot.check_against(manifest)
        verify_snapshot_values(snapshot, manifest)
        return manifest

    def activate(self, release: str) -> None:
        """Verify, then move the pointer: a release that would be refused is never named."""
        self.verify(release)
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
        complete = [e.release for e in self.listing()]
        removable = [r for r in complete[: max(len(complete) - keep, 0)] if r not in protected]
        for release in removable:
            shutil.rmtree(self.dir / release)
        return removable


# --- Redis store: key families under <ns>:<release>: ---------------------------------------


def iter_release_values(
    source: Path, keys: KeySchema, manifest: ReleaseManifest
) -> Iterator[tuple[str, bytes]]:
    """Every key and value of a release: the model, then the values in canonical order (user
    values in the manifest's value format)."""
    release = manifest.release
    yield keys.model(release), (source / MODEL_FILE).read_bytes()
    prefix = keys.prefix(release)
    for name, value in snapshot_values(Snapshot.open(source, manifest.value_format)):
        yield prefix + name.decode(), value


class RedisPublisher:
    """Single-node Redis or a Redis Cluster (a cluster client and a cluster KeySchema, see
    core/redis_cluster.py): SCANs then cover every master, and the control keys the switch moves
    share one slot, so it stays one MULTI."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        keys: KeySchema,
        step: Step = _quiet,
        batch_size: int = 500,
    ) -> None:
        if isinstance(client, RedisCluster) != keys.cluster:
            raise ValueError("a Redis Cluster client needs KeySchema(cluster=True), and only it")
        self.client, self.keys, self.step = client, keys, step
        self.batch_size = batch_size  # keys per pipelined write / MGET read-back

    def active(self) -> str | None:
        value = self.client.get(self.keys.active)
        return value.decode() if value else None

    def listing(self) -> list[Listed]:
        """Complete releases, oldest first; an unreadable manifest is listed with the reason."""
        names = [r.decode() for r in self.client.zrange(self.keys.releases, 0, -1)]
        raw = mget(self.client, [self.keys.manifest(r) for r in names]) if names else []
        found = []
        for release, value in zip(names, raw, strict=True):
            if value is None:
                found.append(Listed(release, None, "manifest key is missing"))
                continue
            try:
                found.append(Listed(release, ReleaseManifest.model_validate_json(value)))
            except ValueError as err:
                found.append(Listed(release, None, manifest_problem(err)))
        return found

    def complete(self) -> list[ReleaseManifest]:
        return [e.manifest for e in self.listing() if e.manifest is not None]

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
        manifest = seal(source)
        release = manifest.release
        if self.client.zscore(self.keys.releases, release) is None:
            self.delete_release_keys(release)  # leftovers of an interrupted publish
            n_keys = 0
            values = iter_release_values(source, self.keys, manifest)
            for batch in batched(values, self.batch_size):
                pipe = self.client.pipeline(transaction=False)
                for key, value in batch:
                    pipe.set(key, value)
                pipe.execute()
                n_keys += len(batch)
                self.step(f"wrote {n_keys} keys")
            self._verify_written(manifest)  # read back: model hash, every value, the digest
            self.step("verified")
            self.client.set(self.keys.manifest(release), manifest.model_dump_json())
            score = dt.datetime.fromisoformat(manifest.created_at).timestamp()
            self.client.zadd(self.keys.releases, {release: score})
            self.step("complete")
        elif self._stored_manifest(release).values_sha256 is None:  # before value digests
            self._verify_written(manifest)  # the stored values must be the export's
            self.client.set(self.keys.manifest(release), manifest.model_dump_json())
            self.step("recorded the values digest")
        if activate:
            self.activate(release)
        self.gc(keep)
        return release

    def _verify_written(self, manifest: ReleaseManifest) -> None:
        release = manifest.release
        model = self.client.get(self.keys.model(release))
        if model is None or sha256_bytes(model) != manifest.model_sha256:
            raise ReleaseCheckError(f"release {release}: model in Redis does not match its hash")
        prefix = self.keys.prefix(release).encode()
        keys = self.client.scan_iter(match=self.keys.prefix(release) + "*", count=1000)
        verifier = ValueVerifier(manifest)
        for names in batched(canonical_names(keys, prefix), self.batch_size):
            verifier.feed(
                list(zip(names, mget(self.client, [prefix + n for n in names]), strict=True))
            )
        verifier.finish()

    def _stored_manifest(self, release: str) -> ReleaseManifest:
        raw = self.client.get(self.keys.manifest(release))
        if raw is None:
            raise ReleaseCheckError(f"release {release}: manifest key is missing")
        try:
            return ReleaseManifest.model_validate_json(raw)
        except ValueError as err:
            raise ReleaseCheckError(f"release {release}: {manifest_problem(err)}") from None

    def verify(self, release: str) -> ReleaseManifest:
        """Everything the service checks before serving: manifest, model hash, every value."""
        if self.client.zscore(self.keys.releases, check_release_id(release)) is None:
            raise ReleaseCheckError(f"release {release} is not a complete release in Redis")
        manifest = self._stored_manifest(release)
        self._verify_written(manifest)
        return manifest

    def activate(self, release: str) -> None:
        """Verify, then move the pointer: a release that would be refused is never named."""
        self.verify(release)
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
        values = mget(self.client, names) if names else []
        return {release for v in values if v for release in v.decode().split()}

    def gc(self, keep: int) -> list[str]:
        """Remove all but the newest `keep` releases; never the active one or one in use."""
        protected = {self.active(), *self.in_use()}
        complete = [e.release for e in self.listing()]
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
    infos = []
    for entry in publisher.listing():
        m = entry.manifest
        if m is None:
            infos.append(
                ReleaseInfo(entry.release, "", "", "", entry.release == active, entry.problem)
            )
        else:
            infos.append(
                ReleaseInfo(
                    m.release, m.created_at, m.model_version, m.feature_version, m.release == active
                )
            )
    return infos


def _created(entry: Listed) -> str:
    return entry.manifest.created_at if entry.manifest else ""
