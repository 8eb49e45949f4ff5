"""Publishing releases of both value formats: format-2 user values go to Redis as RQU2 with their
gap buckets and generated flags, read-back verification checks them, and a value of the other
format or with a bad flag is refused by `activate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reaseq.core.codec import decode_behaviors, encode_behaviors
from reaseq.core.keys import KeySchema
from reaseq.core.release import ReleaseCheckError, Snapshot
from reaseq.offline.publish import EmbeddedPublisher, RedisPublisher
from reaseq.offline.verify_bench import synthetic_release


@pytest.mark.parametrize("value_format", [1, 2])
def test_redis_publish_writes_values_in_the_release_format(
    tmp_path: Path, redis_client, value_format: int
) -> None:
    folder = synthetic_release(tmp_path, 30, 12, 5, 4, value_format=value_format, release="r")
    keys = KeySchema("fmt")
    pub = RedisPublisher(redis_client, keys)
    release = pub.publish(folder)
    assert pub.verify(release).value_format == value_format
    snap = Snapshot.open(folder)
    for row, user in enumerate(snap.user_ids.tolist()):
        value = redis_client.get(keys.user(release, user))
        assert value[:4] == f"RQU{value_format}".encode()
        got = decode_behaviors(value, 4, value_format)
        want = snap.sequence_of(row)
        np.testing.assert_array_equal(got.vectors, want.vectors.astype(np.float32))
        np.testing.assert_array_equal(got.gap_buckets, want.gap_buckets)
        np.testing.assert_array_equal(got.generated, want.generated)
    assert EmbeddedPublisher(tmp_path / "releases").publish(folder) == release


def test_redis_refuses_a_bad_flag_or_a_value_of_the_other_format(
    tmp_path: Path, redis_client
) -> None:
    folder = synthetic_release(tmp_path, 30, 12, 5, 4, value_format=2, release="r2")
    keys = KeySchema("fmt")
    pub = RedisPublisher(redis_client, keys)
    release = pub.publish(folder, activate=False)
    key = keys.user(release, "u0000003")
    good = redis_client.get(key)

    flipped = bytearray(good)
    flipped[-1] = 7  # the last behavior's generated flag
    redis_client.set(key, bytes(flipped))
    with pytest.raises(ReleaseCheckError, match=r"user:u0000003 .*generated flag 7"):
        pub.activate(release)

    vectors = decode_behaviors(good, 4, value_format=2).vectors
    redis_client.set(key, encode_behaviors(vectors))  # same vectors as a format-1 record
    with pytest.raises(ReleaseCheckError, match=r"format-1 behavior record \(RQU1\)"):
        pub.activate(release)
    assert pub.active() is None

    redis_client.set(key, good)
    pub.activate(release)
    assert pub.active() == release
