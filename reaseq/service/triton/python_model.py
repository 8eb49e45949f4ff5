"""Triton Python-backend model that runs the release's ONNX file with ONNX Runtime.

Standard Triton images host the ranker with their native `onnxruntime` backend. The
`tritonserver` inside the PyPI wheel `nvidia-pytriton` ships only the Python backend, so there the
service pushes this file next to `model.onnx` and Triton runs the same ONNX graph through it, with
the same dynamic batching, model control and versioning. Triton loads this file by path; the
service never imports it (it needs `triton_python_backend_utils`, which only Triton provides).

Tensor names and dtypes come from the model config (the Triton repository contract), so one file
serves three- and five-input models alike. One response per request, in order; a request whose
inputs ONNX Runtime rejects gets its own error and the others in the batch are still answered.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        feeds = [
            {n: _array(pb_utils.get_input_tensor_by_name(r, n)) for n in self.input_names}
            for r in requests
        ]
        merged = _merge(feeds)  # Triton batched requests of equal shapes; score them in one call
        if merged is not None:
            try:
                outputs = self.session.run(self.output_names, merged)
            except Exception:  # fall back to one call per request, so errors stay per request
                merged = None
            else:
                sizes = np.cumsum([0] + [len(next(iter(f.values()))) for f in feeds])
                return [
                    pb_utils.InferenceResponse(
                        [
                            _tensor(name, out[sizes[i] : sizes[i + 1]])
                            for name, out in zip(self.output_names, outputs, strict=True)
                        ]
                    )
                    for i in range(len(feeds))
                ]
        responses = []
        for feed in feeds:
            try:
                outputs = self.session.run(self.output_names, feed)
            except Exception as err:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err))))
                continue
            tensors = [_tensor(n, o) for n, o in zip(self.output_names, outputs, strict=True)]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses

    def finalize(self) -> None:
        self.session = None


def _merge(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The requests' inputs concatenated along the batch axis, or None if their shapes differ."""
    if len(feeds) == 1:
        return feeds[0]
    first = feeds[0]
    if any(f[n].shape[1:] != first[n].shape[1:] for f in feeds[1:] for n in first):
        return None
    return {n: np.concatenate([f[n] for f in feeds]) for n in first}


# Tensors cross the stub through DLPack: the stub in pytriton's wheel was built against numpy 1,
# and with numpy 2 installed `pb_utils.Tensor(name, array)` sent empty buffers (seen here).
def _array(tensor) -> np.ndarray:
    return np.from_dlpack(tensor).copy()  # own the data: the request's memory is freed after


def _tensor(name: str, array: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))
