"""Value format 2 in the release files: the snapshot maps the per-behavior gap buckets and
generated flags, the file hashes and the values digest cover them, and a bad one is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from reaseq.core.codec import decode_behaviors
from reaseq.core.release import (
    MANIFEST_FILE,
    USER_GAP_BUCKETS,
    USER_GENERATED,
    ReleaseCheckError,
    Snapshot,
    combine_hashes,
    read_manifest,
    sha256_file,
    snapshot_files,
    verify_release_files,
)
from reaseq.core.values import snapshot_values, user_name, verify_snapshot_values
from reaseq.offline.publish import seal
from reaseq.offline.verify_bench import synthetic_release


@pytest.fixture
def v2_release(tmp_path: Path) -> Path:
    return synthetic_release(tmp_path, 30, 12, 5, 4, value_format=2, release="v2")


def rehashed(folder: Path, name: str, array: np.ndarray) -> None:
    """Replace one snapshot file and make the manifest's file hashes agree with it again, as a
    broken export would: only the value checks can still tell."""
    np.save(folder / name, array, allow_pickle=False)
    manifest = read_manifest(folder)
    files = dict(manifest.files) | {name: sha256_file(folder / name)}
    snapshot = combine_hashes([files[n] for n in snapshot_files(manifest.value_format)])
    update = {"files": files, "snapshot_sha256": snapshot}
    (folder / MANIFEST_FILE).write_text(manifest.model_copy(update=update).model_dump_json())


def test_format_2_snapshot_maps_the_side_arrays_and_encodes_rqu2(v2_release: Path) -> None:
    manifest = read_manifest(v2_release)
    snap = Snapshot.open(v2_release)
    snap.check_against(manifest)
    assert snap.value_format == 2 and is_memory_mapped(snap.user_generated)
    vectors, gaps, flags = snap.sequence_of(3)
    np.testing.assert_array_equal(vectors, snap.behaviors_of(3))
    np.testing.assert_array_equal(gaps, np.load(v2_release / USER_GAP_BUCKETS)[15:20])
    np.testing.assert_array_equal(flags, np.load(v2_release / USER_GENERATED)[15:20])
    values = dict(snapshot_values(snap))
    value = values[user_name(str(snap.user_ids[3]))]
    assert value[:4] == b"RQU2"
    decoded = decode_behaviors(value, manifest.vector_dim, value_format=2)
    assert decoded.gap_buckets.tolist() == gaps.tolist()
    assert decoded.generated.tolist() == flags.tolist()


def test_format_1_snapshot_gives_default_side_inputs(tmp_path: Path) -> None:
    folder = synthetic_release(tmp_path, 30, 12, 5, 4, value_format=1, release="v1")
    assert not (folder / USER_GENERATED).exists()
    snap = Snapshot.open(folder)
    _, gaps, flags = snap.sequence_of(0)
    assert gaps.tolist() == [0] * 5 and flags.tolist() == [0] * 5
    assert next(v for n, v in snapshot_values(snap) if n.startswith(b"user:"))[:4] == b"RQU1"
    seal(folder)


def test_side_files_are_hashed_and_shape_checked(v2_release: Path, tmp_path: Path) -> None:
    manifest = read_manifest(v2_release)
    assert set(snapshot_files(2)) <= set(manifest.files)
    verify_release_files(v2_release, manifest)

    changed = tmp_path / "changed"
    shutil.copytree(v2_release, changed)
    flags = np.load(changed / USER_GENERATED)
    np.save(changed / USER_GENERATED, 1 - flags, allow_pickle=False)
    with pytest.raises(ReleaseCheckError, match=r"user_generated\.npy has sha256"):
        verify_release_files(changed, manifest)

    unhashed = manifest.model_copy(
        update={"files": {k: v for k, v in manifest.files.items() if k != USER_GAP_BUCKETS}}
    )
    with pytest.raises(ReleaseCheckError, match="records no hash for features/user_gap_buck"):
        verify_release_files(v2_release, unhashed)

    short = tmp_path / "short"
    shutil.copytree(v2_release, short)
    rehashed(short, USER_GAP_BUCKETS, np.load(short / USER_GAP_BUCKETS)[:-1])
    with pytest.raises(ReleaseCheckError, match="gap buckets are uint8"):
        Snapshot.open(short).check_against(read_manifest(short))

    missing = tmp_path / "missing"
    shutil.copytree(v2_release, missing)
    (missing / USER_GENERATED).unlink()
    with pytest.raises(ReleaseCheckError, match=r"user_generated\.npy is missing"):
        Snapshot.open(missing)
    with pytest.raises(ReleaseCheckError, match="opened as value format 1, manifest says 2"):
        Snapshot.open(v2_release, value_format=1).check_against(manifest)


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        (USER_GENERATED, 2, "generated flag 2 is not 0 or 1"),
        (USER_GAP_BUCKETS, 99, "gap bucket 99 is out of range"),
    ],
)
def test_bad_side_values_are_refused_even_with_matching_hashes(
    v2_release: Path, name: str, value: int, why: str
) -> None:
    array = np.load(v2_release / name)
    array[7] = value
    rehashed(v2_release, name, array)
    with pytest.raises(ReleaseCheckError, match=why):
        seal(v2_release)


def test_the_values_digest_covers_the_generated_flags(v2_release: Path) -> None:
    sealed = seal(v2_release)
    flags = np.load(v2_release / USER_GENERATED)
    flags[4] = 1 - flags[4]  # still a valid flag: only the digest can tell
    rehashed(v2_release, USER_GENERATED, flags)
    manifest = read_manifest(v2_release).model_copy(update={"values_sha256": sealed.values_sha256})
    with pytest.raises(ReleaseCheckError, match="values digest does not match"):
        verify_snapshot_values(Snapshot.open(v2_release), manifest)


def is_memory_mapped(array: np.ndarray) -> bool:
    """Backed by a file mapping (a plain ndarray view of an np.memmap counts)."""
    import mmap

    base = array
    while base is not None:
        if isinstance(base, np.memmap | mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False
