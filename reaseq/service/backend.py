"""Model backends: score dense candidate/behavior tensors with a release's model.

`OnnxRuntimeBackend` runs the model in-process (the default); a Triton backend implements the same
interface over tritonclient. Tensor names come from the model itself and are checked against the
contract, never assumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import anyio
import numpy as np
import onnxruntime as ort

from reaseq.core import contract
from reaseq.service.errors import ModelBackendUnavailable


class ModelBackendError(ValueError):
    """The model does not fit the contract or the release (refuse the release)."""


class ModelBackend(ABC):
    dim: int

    @abstractmethod
    async def score(
        self, candidates: np.ndarray, behaviors: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """candidates [B, C, D], behaviors [B, L, D], mask [B, L] -> probabilities [B, C]."""

    async def close(self) -> None:
        """Free the model."""


class OnnxRuntimeBackend(ModelBackend):
    def __init__(self, model_bytes: bytes, intra_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                model_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ModelBackendError(f"ONNX Runtime cannot load the model: {err}") from err
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in contract.INPUT_NAMES if n not in inputs]
        missing += [n for n in contract.OUTPUT_NAMES if n not in outputs]
        if missing:
            raise ModelBackendError(f"model lacks the contract tensors {missing}")
        dim = inputs[contract.CANDIDATES].shape[-1]
        if not isinstance(dim, int):
            raise ModelBackendError("model's candidate width D must be static")
        self.dim = dim

    def score_sync(
        self, candidates: np.ndarray, behaviors: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        feeds = {
            contract.CANDIDATES: candidates.astype(np.float32, copy=False),
            contract.BEHAVIORS: behaviors.astype(np.float32, copy=False),
            contract.BEHAVIOR_MASK: mask.astype(np.float32, copy=False),
        }
        (scores,) = self.session.run([contract.SCORES], feeds)
        return scores

    async def score(
        self, candidates: np.ndarray, behaviors: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        try:
            return await anyio.to_thread.run_sync(self.score_sync, candidates, behaviors, mask)
        except Exception as err:
            raise ModelBackendUnavailable(f"ONNX Runtime failed: {err}") from err
