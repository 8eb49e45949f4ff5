"""Publishing: verified before switching, leftovers of interrupted runs cleaned, GC keeps the
active release, rollback goes to the previously active one (embedded store and real Redis)."""

import shutil

import numpy as np
import pytest

from reaseq.core.codec import decode_behaviors, decode_vectors
from reaseq.core.keys import KeySchema
from reaseq.core.release import ACTIVE_FILE, ReleaseCheckError, Snapshot, read_manifest
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher, rollback_target


def test_embedded_publish_activate_gc_and_rollback(tmp_path, pipeline_run, second_release) -> None:
    pub = EmbeddedPublisher(tmp_path / "releases")
    first = pub.publish(pipeline_run.release_dir)
    assert pub.active() == first
    assert (tmp_path / "releases" / ACTIVE_FILE).read_text() == first
    second = pub.publish(second_release)
    assert pub.active() == second
    target = rollback_target(pub.history(), pub.active(), {m.release for m in pub.complete()})
    assert target == first
    pub.activate(target)
    assert pub.active() == first
    # keep=1 keeps the newest and never removes the active one
    assert pub.gc(keep=1) == []
    pub.activate(second)
    assert pub.gc(keep=1) == [first]
    assert not (tmp_path / "releases" / first).exists()
    assert (tmp_path / "releases" / second).is_dir()


def test_embedded_refuses_a_corrupt_release(tmp_path, pipeline_run) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(pipeline_run.release_dir, corrupt)
    vectors = corrupt / "features" / "item_vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    pub = EmbeddedPublisher(tmp_path / "releases")
    with pytest.raises(ReleaseCheckError, match="item_vectors"):
        pub.publish(corrupt)
    assert pub.active() is None


def test_redis_publish_writes_every_value_and_switches(redis_client, pipeline_run) -> None:
    keys = KeySchema("t")
    pub = RedisPublisher(redis_client, keys)
    release = pub.publish(pipeline_run.release_dir)
    assert pub.active() == release
    manifest = read_manifest(pipeline_run.release_dir)
    snap = Snapshot.open(pipeline_run.release_dir)
    item_ids = snap.item_ids.tolist()
    values = redis_client.mget([keys.item(release, i) for i in item_ids])
    vectors, found = decode_vectors(values, manifest.vector_dim)
    assert found.all()
    np.testing.assert_array_equal(vectors, snap.item_vectors.astype(np.float32))
    user = snap.user_ids[0]
    value = redis_client.get(keys.user(release, user))
    got = decode_behaviors(value, manifest.vector_dim, manifest.value_format)
    np.testing.assert_array_equal(got.vectors, snap.behaviors_of(0).astype(np.float32))
    np.testing.assert_array_equal(got.generated, snap.sequence_of(0).generated)
    n_keys = sum(1 for _ in redis_client.scan_iter(match=keys.prefix(release) + "*"))
    assert n_keys == manifest.n_items + manifest.n_users + 3  # + model, default item, manifest


def test_redis_interrupted_publish_is_cleaned_and_never_active(
    redis_client, pipeline_run, second_release
) -> None:
    keys = KeySchema("t")
    pub = RedisPublisher(redis_client, keys)
    first = pub.publish(pipeline_run.release_dir)
    # a publish killed half-way leaves some keys of the new release and no completion mark
    second = read_manifest(second_release).release
    redis_client.set(keys.item(second, "stale"), b"garbage")
    redis_client.set(keys.model(second), b"partial")
    assert pub.active() == first
    assert second not in {m.release for m in pub.complete()}
    pub.publish(second_release)  # the rerun removes leftovers and completes
    assert pub.active() == second
    assert redis_client.get(keys.item(second, "stale")) is None
    pub.activate(first)
    assert pub.active() == first
    assert pub.gc(keep=1) == []  # the newest is kept, and the active one is never removed


def test_redis_gc_removes_old_releases_but_not_the_active(
    redis_client, pipeline_run, second_release
) -> None:
    keys = KeySchema("t")
    pub = RedisPublisher(redis_client, keys)
    first = pub.publish(pipeline_run.release_dir, keep=5)
    second = pub.publish(second_release, activate=False, keep=5)
    assert pub.active() == first
    assert [m.release for m in pub.complete()] == [first, second]
    assert pub.gc(keep=1) == []  # first is older but active
    pub.activate(second)
    assert pub.gc(keep=1) == [first]
    assert [m.release for m in pub.complete()] == [second]
    assert not list(redis_client.scan_iter(match=keys.prefix(first) + "*"))


def test_rollback_needs_an_earlier_kept_release() -> None:
    with pytest.raises(ReleaseCheckError, match="no earlier release"):
        rollback_target(["a"], "a", {"a"})
    assert rollback_target(["a", "b", "c"], "c", {"a", "c"}) == "a"
