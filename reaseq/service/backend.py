"""Model backends: score dense candidate/behavior tensors with a release's model.

`OnnxRuntimeBackend` runs the model in-process (the default); a Triton backend implements the same
interface over tritonclient. Tensor names come from the model itself and are checked against the
contract, never assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import anyio
import numpy as np
import onnxruntime as ort

from reaseq.core import contract
from reaseq.service import metrics
from reaseq.service.errors import ModelBackendUnavailable
from reaseq.service.logs import log_throttled

log = logging.getLogger(__name__)


def _scoring_failed(err: BaseException) -> ModelBackendUnavailable:
    """Callers hear that scoring failed; what ONNX Runtime said goes to the server log."""
    log_throttled("onnxruntime", "ONNX Runtime failed while scoring: %s", err)
    return ModelBackendUnavailable("the model backend failed while scoring; retry")


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
            log.warning("ONNX Runtime cannot load a release's model: %s", err)
            raise ModelBackendError("ONNX Runtime cannot load the model file") from err
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
            raise _scoring_failed(err) from err


@dataclass
class _Pending:
    candidates: np.ndarray  # [1, C, D]
    behaviors: np.ndarray  # [1, L, D]
    mask: np.ndarray  # [1, L]
    future: asyncio.Future


class MicroBatcher(ModelBackend):
    """Merges concurrent requests into one model call (greedy: whatever is queued when a worker
    frees up, up to `max_batch`), so a busy service makes fewer, larger calls and an idle one adds
    no waiting. Candidates and behaviors are zero-padded to the batch's largest C and L; padded
    behaviors are masked out and padded candidates' scores dropped, so answers do not change."""

    def __init__(self, inner: OnnxRuntimeBackend, max_batch: int = 16, workers: int = 2) -> None:
        self.inner, self.dim = inner, inner.dim
        self.max_batch, self.n_workers = max_batch, workers
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._workers: list[asyncio.Task] = []
        self._in_flight = 0
        self._closed = False

    async def score(
        self, candidates: np.ndarray, behaviors: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        if self._closed:  # a late request on a release that was switched away from
            return await self.inner.score(candidates, behaviors, mask)
        if not self._workers:
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.n_workers)]
        future = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        try:
            self._queue.put_nowait(_Pending(candidates, behaviors, mask, future))
            return await future
        finally:
            self._in_flight -= 1

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # callers that gave up
            if not batch:
                continue
            metrics.observe_batch(len(batch))
            try:
                scores = await anyio.to_thread.run_sync(self._run, batch)
            except Exception as err:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(_scoring_failed(err))
                continue
            for p, row in zip(batch, scores, strict=True):
                if not p.future.done():
                    p.future.set_result(row[None, : p.candidates.shape[1]])

    def _run(self, batch: list[_Pending]) -> np.ndarray:
        if len(batch) == 1:
            p = batch[0]
            return self.inner.score_sync(p.candidates, p.behaviors, p.mask)
        n_cand = max(p.candidates.shape[1] for p in batch)
        n_beh = max(p.behaviors.shape[1] for p in batch)
        cand = np.zeros((len(batch), n_cand, self.dim), dtype=np.float32)
        beh = np.zeros((len(batch), n_beh, self.dim), dtype=np.float32)
        mask = np.zeros((len(batch), n_beh), dtype=np.float32)
        for i, p in enumerate(batch):
            cand[i, : p.candidates.shape[1]] = p.candidates[0]
            beh[i, : p.behaviors.shape[1]] = p.behaviors[0]
            mask[i, : p.mask.shape[1]] = p.mask[0]
        return self.inner.score_sync(cand, beh, mask)

    async def close(self, drain_s: float = 10.0) -> None:
        """Let queued requests finish (up to drain_s), then stop the workers."""
        self._closed = True
        deadline = asyncio.get_running_loop().time() + drain_s
        while self._in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
