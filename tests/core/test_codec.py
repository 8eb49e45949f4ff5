import numpy as np
import pytest

from reaseq.core.codec import decode_behaviors, decode_vectors, encode_behaviors, encode_vector
from reaseq.core.contract import GAP_FIRST, GAP_LOG_BASE, GAP_UNKNOWN, N_GAP_BUCKETS
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
    vectors, gaps, flags = decode_behaviors(encode_behaviors(seq), dim=4, value_format=1)
    np.testing.assert_array_equal(vectors, seq)
    assert gaps.tolist() == [GAP_UNKNOWN] * 3 and flags.tolist() == [0, 0, 0]  # format 1: unknown
    empty = decode_behaviors(encode_behaviors(np.zeros((0, 4))), dim=4, value_format=1)
    assert empty.vectors.shape == (0, 4) and empty.gap_buckets.shape == (0,)
    with pytest.raises(ValueError, match="D=4"):
        decode_behaviors(encode_behaviors(seq), dim=5, value_format=1)
    with pytest.raises(ValueError, match="truncated"):
        decode_behaviors(encode_behaviors(seq)[:-2], dim=4, value_format=1)


def v2_value(gaps=(GAP_FIRST, 5, GAP_LOG_BASE), flags=(0, 1, 0)) -> bytes:
    seq = np.arange(12, dtype=np.float32).reshape(3, 4)
    return encode_behaviors(seq, np.array(gaps), np.array(flags), value_format=2)


def test_format_2_round_trips_buckets_and_generated_flags() -> None:
    value = v2_value()
    assert value[:4] == b"RQU2"
    assert len(value) == 8 + 3 * 4 * 2 + 3 + 3  # header, float16 vectors, buckets, flags
    vectors, gaps, flags = decode_behaviors(value, dim=4, value_format=2)
    np.testing.assert_array_equal(vectors, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert gaps.tolist() == [GAP_FIRST, 5, GAP_LOG_BASE]
    assert flags.tolist() == [0, 1, 0]
    empty = encode_behaviors(np.zeros((0, 4)), value_format=2)
    assert decode_behaviors(empty, dim=4, value_format=2).generated.shape == (0,)


def patched(value: bytes, from_end: int, byte: int) -> bytes:
    """`value` with the byte `from_end` places before its end set to `byte`."""
    out = bytearray(value)
    out[len(out) - from_end] = byte
    return bytes(out)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (v2_value()[:-1], "truncated"),  # one flag byte short
        (v2_value()[:-6], "truncated"),  # both side arrays cut off: a format-1 length
        (v2_value() + b"\0", "1 bytes too many"),
        (v2_value()[:5], "truncated"),  # not even a header
        (patched(v2_value(), 5, N_GAP_BUCKETS), f"gap bucket {N_GAP_BUCKETS} is out of range"),
        (patched(v2_value(), 2, 2), "generated flag 2 is not 0 or 1"),
        (patched(v2_value(), 1, 7), "generated flag 7 is not 0 or 1"),
        (b"XXXX" + v2_value()[4:], "not a behavior record"),
    ],
)
def test_bad_format_2_records_are_refused(value: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_behaviors(value, dim=4, value_format=2)


def test_a_record_of_the_other_format_is_refused_clearly() -> None:
    seq = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"format-1 behavior record \(RQU1\) in a format-2"):
        decode_behaviors(encode_behaviors(seq), dim=4, value_format=2)
    with pytest.raises(ValueError, match=r"format-2 behavior record \(RQU2\) in a format-1"):
        decode_behaviors(encode_behaviors(seq, value_format=2), dim=4, value_format=1)


def test_the_encoder_never_loses_side_inputs() -> None:
    seq = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="format 1 holds no"):
        encode_behaviors(seq, generated=np.array([0, 1]), value_format=1)
    assert encode_behaviors(seq, np.zeros(2), np.zeros(2), value_format=1) == encode_behaviors(seq)
    with pytest.raises(ValueError, match="fit a byte"):
        encode_behaviors(seq, np.array([0, 300]), value_format=2)
    with pytest.raises(ValueError, match="fit a byte"):
        encode_behaviors(seq, None, np.array([1, -1]), value_format=2)
    with pytest.raises(ValueError, match="shapes"):
        encode_behaviors(seq, np.zeros(3), value_format=2)


def test_keys_are_namespaced_by_release() -> None:
    keys = KeySchema("ns")
    assert keys.item("r1", "42") == "ns:r1:item:42"
    assert keys.user("r1", "u") == "ns:r1:user:u"
    assert keys.item("r1", "42").startswith(keys.prefix("r1"))
    assert keys.active == "ns:active"
