"""Model backends on the pipeline's real ONNX model: contract checks, and micro-batching that
merges concurrent requests without changing any answer."""

import asyncio

import numpy as np
import pytest

from reaseq.core.release import MODEL_FILE, read_manifest
from reaseq.service.backend import MicroBatcher, ModelBackendError, OnnxRuntimeBackend

pytestmark = pytest.mark.anyio


def test_a_model_without_the_contract_is_refused() -> None:
    with pytest.raises(ModelBackendError, match="cannot load"):
        OnnxRuntimeBackend(b"not an onnx model")


async def test_micro_batching_merges_requests_and_keeps_answers(pipeline_run) -> None:
    model_bytes = (pipeline_run.release_dir / MODEL_FILE).read_bytes()
    dim = read_manifest(pipeline_run.release_dir).vector_dim
    plain = OnnxRuntimeBackend(model_bytes)
    batcher = MicroBatcher(OnnxRuntimeBackend(model_bytes), max_batch=8, workers=1)
    rng = np.random.default_rng(0)
    requests = []
    for i in range(24):  # different candidate and behavior counts, one with an empty history
        c, length = 3 + i % 5, 1 + (7 * i) % 11
        mask = np.ones((1, length), np.float32) if i % 6 else np.zeros((1, length), np.float32)
        requests.append(
            (
                rng.normal(size=(1, c, dim)).astype(np.float32),
                rng.normal(size=(1, length, dim)).astype(np.float32),
                mask,
            )
        )
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
