"""The `triton` model backend: the release's model hosted on a Triton Inference Server.

The service pushes the model bytes it has already verified against the release manifest (model
control API, explicit mode: `load_model` with a config override and the file), so the model Triton
runs is exactly the release's, and it is loaded and warmed up before the service switches features.
Each model gets its own Triton name, `reaseq_ranker-<sha256 prefix>`: releases that differ in
width D or in the behavior side inputs never share a config, and two releases with the same model
share one loaded copy. A release's model is unloaded when the release has drained after a switch.
Triton is meant as a sidecar (one per service instance), which owns the models it hosts.

Failures are fast and clear: an unreachable or failing Triton is `ModelBackendUnavailable`
(UNAVAILABLE / 503) within `triton_timeout_s` or the request's deadline, or, with
`triton_fallback = "local"`, the same model scored in-process. A restarted Triton has lost its
models; the first failed call reloads them in the background, so service recovers without restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from reaseq.core import contract
from reaseq.core.release import sha256_bytes
from reaseq.core.triton_config import MODEL_NAME, RuntimeKind, model_config, to_json
from reaseq.service import metrics
from reaseq.service.backend import (
    DEGRADED,
    ModelBackend,
    ModelInputs,
    OnnxRuntimeBackend,
    model_feeds,
)
from reaseq.service.errors import ModelBackendUnavailable
from reaseq.service.logs import log_throttled

log = logging.getLogger(__name__)
PYTHON_MODEL = Path(__file__).with_name("python_model.py")
# reconnect quickly after a Triton restart (gRPC's default backoff grows to minutes)
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
]
_MISSING_MODEL = ("unknown model", "not at ready state", "not found", "is not ready")


@dataclass
class TritonOptions:
    url: str = "127.0.0.1:8001"
    runtime: RuntimeKind = "onnxruntime"  # "python": ONNX Runtime in Triton's Python backend
    timeout_s: float = 1.0  # one inference call, unless the request's deadline is shorter
    load_timeout_s: float = 60.0  # loading one model into Triton
    max_batch_size: int = 64
    queue_delay_us: int = 200
    instances: int = 1
    gpu: bool = False  # instance group KIND_GPU (Triton on a GPU node) instead of KIND_CPU
    intra_op_threads: int = 1  # python runtime: ONNX Runtime threads per instance


@dataclass
class _Hosted:
    model_bytes: bytes
    config_json: str
    holders: int = 0
    reloading: asyncio.Task | None = None


@dataclass
class TritonModels:
    """The ranker models this service keeps loaded in its Triton, reference-counted by release."""

    options: TritonOptions
    _client: aioclient.InferenceServerClient | None = None
    _hosted: dict[str, _Hosted] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def client(self) -> aioclient.InferenceServerClient:
        if self._client is None:  # created in the serving event loop, reused by every call
            self._client = aioclient.InferenceServerClient(
                self.options.url, channel_args=CHANNEL_ARGS
            )
        return self._client

    def _files(self, model_bytes: bytes) -> dict[str, bytes]:
        files = {"file:1/model.onnx": model_bytes}
        if self.options.runtime == "python":
            files["file:1/model.py"] = PYTHON_MODEL.read_bytes()
        return files

    async def acquire(
        self, name: str, model_bytes: bytes, dim: int, side_inputs: bool, attention: bool
    ) -> None:
        """Load `name` into Triton unless this service already holds it; count the holder."""
        async with self._lock:
            hosted = self._hosted.get(name)
            if hosted is None:
                o = self.options
                config = model_config(
                    o.runtime,
                    name=name,
                    max_batch_size=o.max_batch_size,
                    queue_delay_us=o.queue_delay_us,
                    instances=o.instances,
                    gpu=o.gpu,
                    dim=dim,
                    side_inputs=side_inputs,
                    attention=attention,
                    intra_op_threads=o.intra_op_threads,
                )
                hosted = _Hosted(model_bytes, to_json(config))
                await self._load(name, hosted)
                self._hosted[name] = hosted
            hosted.holders += 1

    async def _load(self, name: str, hosted: _Hosted) -> None:
        started = time.perf_counter()
        try:
            await self.client.load_model(
                name,
                config=hosted.config_json,
                files=self._files(hosted.model_bytes),
                client_timeout=self.options.load_timeout_s,
            )
        except InferenceServerException as err:
            log_throttled("triton-load", "Triton could not load %s: %s", name, err)
            raise ModelBackendUnavailable(
                f"Triton at {self.options.url} could not load the model {name}: "
                f"{_short(err)}; the service retries at the next release check"
            ) from None
        log.info("Triton loaded %s in %.2f s", name, time.perf_counter() - started)

    async def release(self, name: str) -> None:
        """One holder fewer; the last one unloads the model (after its release drained)."""
        async with self._lock:
            hosted = self._hosted.get(name)
            if hosted is None:
                return
            hosted.holders -= 1
            if hosted.holders > 0:
                return
            del self._hosted[name]
            if hosted.reloading:
                hosted.reloading.cancel()
        try:
            await self.client.unload_model(name, client_timeout=self.options.timeout_s * 5)
        except InferenceServerException as err:  # Triton down: it has lost the model anyway
            log_throttled("triton-unload", "Triton could not unload %s: %s", name, err)

    def reload_in_background(self, name: str) -> None:
        """Triton lost the model (it restarted): load it again, once, without blocking callers."""
        hosted = self._hosted.get(name)
        if hosted is None or (hosted.reloading and not hosted.reloading.done()):
            return

        async def reload() -> None:
            with contextlib.suppress(ModelBackendUnavailable):
                await self._load(name, hosted)

        hosted.reloading = asyncio.create_task(reload())

    async def infer(
        self,
        name: str,
        inputs: dict[str, np.ndarray],
        timeout_s: float,
        outputs: tuple[str, ...] = (contract.SCORES,),
    ) -> list[np.ndarray]:
        tensors = []
        for tensor_name, array in inputs.items():
            tensor = aioclient.InferInput(
                tensor_name, array.shape, grpcclient.np_to_triton_dtype(array.dtype)
            )
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [aioclient.InferRequestedOutput(o) for o in outputs]
        try:
            result = await self.client.infer(
                name, tensors, outputs=requested, client_timeout=timeout_s
            )
        except InferenceServerException as err:
            if any(m in str(err).lower() for m in _MISSING_MODEL):
                self.reload_in_background(name)
            log_throttled("triton-infer", "Triton failed to score with %s: %s", name, err)
            raise ModelBackendUnavailable(
                f"the Triton model backend at {self.options.url} failed: {_short(err)}; retry"
            ) from None
        return [result.as_numpy(o) for o in outputs]

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None


def _short(err: InferenceServerException) -> str:
    text = err.message() if hasattr(err, "message") else str(err)
    return (text or str(err)).splitlines()[0][:200]


def triton_model_name(model_bytes: bytes) -> str:
    return f"{MODEL_NAME}-{sha256_bytes(model_bytes)[:16]}"


class TritonBackend(ModelBackend):
    """One release's model on Triton; loaded on first use (the release's warm-up, before the
    switch), unloaded on close (after the release drained)."""

    def __init__(
        self,
        models: TritonModels,
        model_bytes: bytes,
        checked: OnnxRuntimeBackend,
        fallback: bool = False,
    ) -> None:
        self.models, self.model_bytes = models, model_bytes
        self.dim, self.side_inputs = checked.dim, checked.side_inputs
        self.explains = checked.explains
        self.name = triton_model_name(model_bytes)
        self.fallback = checked if fallback else None  # the same model, in-process
        self._acquired = False
        self._acquire_lock = asyncio.Lock()

    async def _ensure_loaded(self) -> None:
        async with self._acquire_lock:
            if not self._acquired:
                await self.models.acquire(
                    self.name, self.model_bytes, self.dim, self.side_inputs, self.explains
                )
                self._acquired = True

    async def score(
        self,
        candidates: np.ndarray,
        behaviors: np.ndarray,
        mask: np.ndarray,
        gap_buckets: np.ndarray,
        generated: np.ndarray,
    ) -> np.ndarray:
        inputs = ModelInputs(candidates, behaviors, mask, gap_buckets, generated)
        (scores,) = await self._call(inputs, (contract.SCORES,))
        return scores

    async def explain(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, attention = await self._call(
            ModelInputs(*inputs), (contract.SCORES, contract.ATTENTION)
        )
        return scores, attention

    async def _call(self, inputs: ModelInputs, outputs: tuple[str, ...]) -> list[np.ndarray]:
        try:
            if not self._acquired:
                await self._ensure_loaded()
            return await self.models.infer(
                self.name,
                model_feeds(inputs, self.side_inputs),
                self.models.options.timeout_s,
                outputs,
            )
        except ModelBackendUnavailable:
            if self.fallback is None:
                raise
            metrics.TRITON_FALLBACK.inc()
            DEGRADED.set(True)  # the response says a fallback answered
            if len(outputs) == 1:
                return [await self.fallback.score(*inputs)]
            return list(await self.fallback.explain(*inputs))

    async def close(self) -> None:
        if self._acquired:
            self._acquired = False
            await self.models.release(self.name)
