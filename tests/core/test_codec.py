import numpy as np
import pytest

from reaseq.core.codec import decode_behaviors, decode_vectors, encode_behaviors, encode_vector
from reaseq.core.keys import KeySchema


def test_vectors_round_trip_as_float16() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 8)).astype(np.float32)
    decoded, found = decode_vectors([encode_vector(v) for v in vectors] + [None], dim=8)
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_allclose(decoded[:3], vectors, atol=2e-3)
    assert not decoded[3].any()


def test_vector_of_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 16"):
        decode_vectors([encode_vector(np.zeros(4))], dim=8)


def test_behaviors_round_trip_and_width_check() -> None:
    seq = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(decode_behaviors(encode_behaviors(seq), dim=4), seq)
    assert decode_behaviors(encode_behaviors(np.zeros((0, 4))), dim=4).shape == (0, 4)
    with pytest.raises(ValueError, match="D=4"):
        decode_behaviors(encode_behaviors(seq), dim=5)
    with pytest.raises(ValueError, match="truncated"):
        decode_behaviors(encode_behaviors(seq)[:-2], dim=4)


def test_keys_are_namespaced_by_release() -> None:
    keys = KeySchema("ns")
    assert keys.item("r1", "42") == "ns:r1:item:42"
    assert keys.user("r1", "u") == "ns:r1:user:u"
    assert keys.item("r1", "42").startswith(keys.prefix("r1"))
    assert keys.active == "ns:active"
