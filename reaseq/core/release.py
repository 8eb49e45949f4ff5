"""A release: one scoring model and the feature snapshot it was exported with, as one unit.

The published item vectors contain ID embeddings trained with that model, so features and model
are only valid together (DESIGN §3.5). On disk a release is a folder:

    <releases_dir>/<release>/manifest.json        ReleaseManifest (hashes, dims, counts, metrics)
    <releases_dir>/<release>/model.onnx           scoring model (dense vectors in, scores out)
    <releases_dir>/<release>/features/*.npy       snapshot: item vectors + user behavior sequences
    <releases_dir>/ACTIVE                         the active release id, replaced atomically

The same snapshot is what `reaseq publish --store redis` writes under `<ns>:<release>:…`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
FEATURES_DIR = "features"
ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "HISTORY"  # activated release ids, one per line, newest last
IN_USE_DIR = ".in-use"  # one file per running service instance naming the release it holds
IN_USE_TTL_S = 60  # a marker older than this is stale (its service died); GC may ignore it
RELEASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# snapshot files, relative to the release folder
ITEM_IDS = f"{FEATURES_DIR}/item_ids.npy"  # <U… [N]
ITEM_VECTORS = f"{FEATURES_DIR}/item_vectors.npy"  # float16 [N, D]
DEFAULT_ITEM_VECTOR = f"{FEATURES_DIR}/default_item_vector.npy"  # float16 [D], for unknown items
USER_IDS = f"{FEATURES_DIR}/user_ids.npy"  # <U… [U]
USER_OFFSETS = f"{FEATURES_DIR}/user_offsets.npy"  # int64 [U + 1], CSR into USER_BEHAVIORS
USER_BEHAVIORS = f"{FEATURES_DIR}/user_behaviors.npy"  # float16 [T, D], oldest first per user
SNAPSHOT_FILES = (
    ITEM_IDS,
    ITEM_VECTORS,
    DEFAULT_ITEM_VECTOR,
    USER_IDS,
    USER_OFFSETS,
    USER_BEHAVIORS,
)


class ReleaseManifest(BaseModel):
    """Everything needed to check that a loaded model and feature snapshot belong together."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    release: str
    created_at: str
    model_version: str
    feature_version: str
    vector_dim: int = Field(gt=0)
    vector_dtype: str = "float16"
    max_behaviors: int = Field(gt=0)
    n_items: int = Field(ge=0)
    n_users: int = Field(ge=0)
    n_behaviors: int = Field(ge=0)
    model_sha256: str
    snapshot_sha256: str  # hash over the snapshot files' hashes, in SNAPSHOT_FILES order
    # sha256 over every published value in canonical order (reaseq/core/values.py), recorded by
    # `publish`; loading recomputes it from the store, so a value changed in Redis is refused
    values_sha256: str | None = None
    files: dict[str, str]  # relative path -> sha256, model and snapshot files
    code_version: str
    dataset: str
    features: str
    metrics: dict[str, float] = Field(default_factory=dict)
    ranker_config: dict = Field(default_factory=dict)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def combine_hashes(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def check_release_id(release: str) -> str:
    if not RELEASE_ID_PATTERN.match(release):
        raise ValueError(f"release id {release!r} must match {RELEASE_ID_PATTERN.pattern}")
    return release


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def mark_in_use(releases_dir: Path, instance: str, releases: Iterable[str]) -> None:
    """Embedded store: tell publishers' GC which releases this instance still serves from."""
    folder = releases_dir / IN_USE_DIR
    folder.mkdir(exist_ok=True)
    write_atomic(folder / instance, " ".join(sorted(releases)).encode())


def clear_in_use(releases_dir: Path, instance: str) -> None:
    (releases_dir / IN_USE_DIR / instance).unlink(missing_ok=True)


def releases_in_use(releases_dir: Path, now: float | None = None) -> set[str]:
    """Releases named by fresh in-use markers (a dead service's marker expires)."""
    import time

    now = time.time() if now is None else now
    found = set()
    for marker in (releases_dir / IN_USE_DIR).glob("*"):
        try:
            if now - marker.stat().st_mtime < IN_USE_TTL_S:
                found.update(marker.read_text().split())
        except FileNotFoundError:
            continue
    return found


def read_manifest(release_dir: Path) -> ReleaseManifest:
    return ReleaseManifest.model_validate_json((release_dir / MANIFEST_FILE).read_text())


class ReleaseCheckError(ValueError):
    """A release whose files do not match its manifest; it must not be served."""


def manifest_problem(err: Exception) -> str:
    """One line on why a manifest cannot be read: the first field pydantic rejects, or the file
    system's reason, without parser internals (it is shown in `release list` and `/readyz`)."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "the document"
        return f"manifest is unreadable: {where}: {first.get('msg', 'invalid')}"
    if isinstance(err, OSError):
        return f"manifest is unreadable: {err.strerror or 'cannot read the file'}"
    return "manifest is unreadable"


def verify_release_files(release_dir: Path, manifest: ReleaseManifest) -> None:
    """Re-hash every file the manifest names; raise `ReleaseCheckError` on the first mismatch."""
    for rel_path, expected in manifest.files.items():
        path = release_dir / rel_path
        if not path.is_file():
            raise ReleaseCheckError(f"release {manifest.release}: {rel_path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ReleaseCheckError(
                f"release {manifest.release}: {rel_path} has sha256 {actual[:12]}…, "
                f"manifest says {expected[:12]}…"
            )
    snapshot = combine_hashes([manifest.files[name] for name in SNAPSHOT_FILES])
    if snapshot != manifest.snapshot_sha256:
        raise ReleaseCheckError(f"release {manifest.release}: snapshot hash does not match")


@dataclass
class Snapshot:
    """A feature snapshot opened from disk; the large arrays are memory-mapped, not read."""

    item_ids: np.ndarray
    item_vectors: np.ndarray  # float16 [N, D], mmap
    default_item_vector: np.ndarray
    user_ids: np.ndarray
    user_offsets: np.ndarray
    user_behaviors: np.ndarray  # float16 [T, D], mmap

    @classmethod
    def open(cls, release_dir: Path) -> Snapshot:
        def load(name: str, mmap: bool = False) -> np.ndarray:
            return np.load(release_dir / name, mmap_mode="r" if mmap else None)

        return cls(
            item_ids=load(ITEM_IDS),
            item_vectors=load(ITEM_VECTORS, mmap=True),
            default_item_vector=load(DEFAULT_ITEM_VECTOR),
            user_ids=load(USER_IDS),
            user_offsets=load(USER_OFFSETS),
            user_behaviors=load(USER_BEHAVIORS, mmap=True),
        )

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def behaviors_of(self, user_row: int) -> np.ndarray:
        start, end = self.user_offsets[user_row], self.user_offsets[user_row + 1]
        return self.user_behaviors[start:end]

    def check_against(self, manifest: ReleaseManifest) -> None:
        """Shapes and counts must be what the manifest promises."""
        problems = []
        if self.dim != manifest.vector_dim:
            problems.append(f"item vectors have D={self.dim}, manifest says {manifest.vector_dim}")
        if len(self.item_ids) != manifest.n_items or len(self.item_vectors) != manifest.n_items:
            problems.append(f"{len(self.item_ids)} items, manifest says {manifest.n_items}")
        if len(self.user_ids) != manifest.n_users:
            problems.append(f"{len(self.user_ids)} users, manifest says {manifest.n_users}")
        if self.user_behaviors.shape != (manifest.n_behaviors, manifest.vector_dim):
            problems.append(f"behaviors have shape {self.user_behaviors.shape}")
        if self.default_item_vector.shape != (manifest.vector_dim,):
            problems.append("default item vector has the wrong width")
        if problems:
            raise ReleaseCheckError(f"release {manifest.release}: " + "; ".join(problems))
