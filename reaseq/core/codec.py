"""Compact binary values for the feature store: float16 item vectors and packed behavior sequences.

One codec serves the embedded snapshot, the Redis publisher and the service reader, so a value
written by one is read the same way by the others.
"""

from __future__ import annotations

import struct

import numpy as np

VECTOR_DTYPE = np.dtype("<f2")
_USER_MAGIC = b"RQU1"
_USER_HEADER = struct.Struct("<4sHH")  # magic, L behaviors, D width


def encode_vector(vector: np.ndarray) -> bytes:
    """One item vector as little-endian float16 bytes (2·D bytes)."""
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def decode_vectors(values: list[bytes | None], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode many item values at once: (float32 [K, D], found bool [K]); missing rows are zero.

    One join + one frombuffer for all found values, not a numpy call per value."""
    found = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    present = [v for v in values if v is not None]
    if any(len(v) != 2 * dim for v in present):
        bad = next(len(v) for v in present if len(v) != 2 * dim)
        raise ValueError(f"item value has {bad} bytes, expected {2 * dim} (D={dim})")
    out = np.zeros((len(values), dim), dtype=np.float32)
    if present:
        out[found] = np.frombuffer(b"".join(present), dtype=VECTOR_DTYPE).reshape(-1, dim)
    return out, found


def encode_behaviors(vectors: np.ndarray) -> bytes:
    """A user's behavior sequence [L, D] (oldest first) as header + float16 payload."""
    vectors = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE)
    length, dim = vectors.shape
    return _USER_HEADER.pack(_USER_MAGIC, length, dim) + vectors.tobytes()


def decode_behaviors(value: bytes, dim: int) -> np.ndarray:
    """Inverse of `encode_behaviors`, checking the width against the release's D."""
    magic, length, width = _USER_HEADER.unpack_from(value)
    if magic != _USER_MAGIC:
        raise ValueError(f"not a behavior record (magic {magic!r})")
    if width != dim:
        raise ValueError(f"behavior record has D={width}, the release has D={dim}")
    payload = memoryview(value)[_USER_HEADER.size :]
    if len(payload) != 2 * length * dim:
        raise ValueError("behavior record is truncated")
    return np.frombuffer(payload, dtype=VECTOR_DTYPE).reshape(length, dim).astype(np.float32)
