"""Model backends on the pipeline's real ONNX model and on tiny models with and without the
behavior side inputs: contract checks, and micro-batching that merges concurrent requests
without changing any answer."""

import asyncio

import numpy as np
import pytest

from reaseq.core import contract
from reaseq.core.release import MODEL_FILE, read_manifest
from reaseq.service.backend import MicroBatcher, ModelBackendError, OnnxRuntimeBackend
from tests.core.tiny_release import DIM, tiny_model

pytestmark = pytest.mark.anyio


def test_a_model_without_the_contract_is_refused() -> None:
    with pytest.raises(ModelBackendError, match="cannot load"):
        OnnxRuntimeBackend(b"not an onnx model")


def random_requests(dim: int, n: int = 24, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Requests with different candidate and behavior counts, side inputs, and an empty history."""
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(n):
        c, length = 3 + i % 5, 1 + (7 * i) % 11
        mask = np.ones((1, length), np.float32) if i % 6 else np.zeros((1, length), np.float32)
        requests.append(
            (
                rng.normal(size=(1, c, dim)).astype(np.float32),
                rng.normal(size=(1, length, dim)).astype(np.float32),
                mask,
                rng.integers(0, contract.N_GAP_BUCKETS, size=(1, length)),
                (rng.random((1, length)) < 0.3).astype(np.float32),
            )
        )
    return requests


async def check_micro_batching(model_bytes: bytes, dim: int) -> None:
    plain = OnnxRuntimeBackend(model_bytes)
    batcher = MicroBatcher(OnnxRuntimeBackend(model_bytes), max_batch=8, workers=1)
    requests = random_requests(dim)
    calls = []
    original = batcher._run
    batcher._run = lambda batch: calls.append(len(batch)) or original(batch)
    batched = await asyncio.gather(*(batcher.score(*r) for r in requests))
    for req, got in zip(requests, batched, strict=True):
        want = plain.score_sync(*req)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert max(calls) > 1 and sum(calls) == len(requests)
    await batcher.close()
    # after close (a release switched away), late requests are still answered, unbatched
    np.testing.assert_allclose(
        await batcher.score(*requests[0]), plain.score_sync(*requests[0]), atol=1e-6
    )


async def test_micro_batching_merges_requests_and_keeps_answers(pipeline_run) -> None:
    model_bytes = (pipeline_run.release_dir / MODEL_FILE).read_bytes()
    await check_micro_batching(model_bytes, read_manifest(pipeline_run.release_dir).vector_dim)


@pytest.mark.parametrize("side_inputs", [False, True])
async def test_micro_batching_pads_the_side_inputs_of_either_model(side_inputs: bool) -> None:
    """Five-input and three-input models alike: padded behaviors (GAP_UNKNOWN, flag 0, masked)
    change no answer, and only a model that declares the side inputs is fed them."""
    assert OnnxRuntimeBackend(tiny_model(side_inputs)).side_inputs is side_inputs
    await check_micro_batching(tiny_model(side_inputs), DIM)
