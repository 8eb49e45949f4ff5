"""The Triton model configuration of the ranker: one definition for the committed repository and
for the configs the service pushes when it loads a release's model.

`model_repository/reaseq_ranker/config.pbtxt` and `reaseq_ranker_fp16/config.pbtxt` (native
`onnxruntime_onnx`, standard Triton images) and `reaseq_ranker_trt/config.pbtxt` (`tensorrt_plan`)
are rendered from here and pinned by a test. They declare no tensors: Triton's auto-complete
reads them from the model file, so one config fits every release whatever its width D. The configs
the service pushes declare the tensors exactly, from the model it has already checked against the
contract.
"""

from __future__ import annotations

from typing import Literal

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from reaseq.core import contract

MODEL_NAME = "reaseq_ranker"
FP16_MODEL_NAME = "reaseq_ranker_fp16"  # the same graph in half precision (GPU hosts)
TRT_MODEL_NAME = "reaseq_ranker_trt"
RuntimeKind = Literal["onnxruntime", "python", "tensorrt"]

_DTYPES = {  # contract tensor -> Triton dtype
    contract.CANDIDATES: mc.TYPE_FP32,
    contract.BEHAVIORS: mc.TYPE_FP32,
    contract.BEHAVIOR_MASK: mc.TYPE_FP32,
    contract.BEHAVIOR_GAP_BUCKETS: mc.TYPE_INT64,
    contract.BEHAVIOR_GENERATED: mc.TYPE_FP32,
    contract.SCORES: mc.TYPE_FP32,
    contract.ATTENTION: mc.TYPE_FP32,
}
_DIMS = {  # per-request shape without the batch axis; D filled in from the model
    contract.CANDIDATES: [-1, "D"],
    contract.BEHAVIORS: [-1, "D"],
    contract.BEHAVIOR_MASK: [-1],
    contract.BEHAVIOR_GAP_BUCKETS: [-1],
    contract.BEHAVIOR_GENERATED: [-1],
    contract.SCORES: [-1],
    contract.ATTENTION: [-1, -1],
}


def model_config(
    kind: RuntimeKind,
    *,
    name: str = MODEL_NAME,
    max_batch_size: int = 64,
    queue_delay_us: int = 200,
    instances: int = 1,
    gpu: bool = False,
    dim: int | None = None,
    side_inputs: bool = True,
    attention: bool = False,
    intra_op_threads: int = 1,
) -> mc.ModelConfig:
    """The ranker's config. With `dim`, inputs and outputs are declared (pushed configs);
    without, they are left to Triton's auto-complete (committed configs)."""
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if kind == "onnxruntime":
        config.platform = "onnxruntime_onnx"
    elif kind == "tensorrt":
        config.platform = "tensorrt_plan"
    else:  # python: ONNX Runtime inside Triton's Python backend (python_model.py)
        config.backend = "python"
        config.parameters["intra_op_threads"].string_value = str(intra_op_threads)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    group = config.instance_group.add(count=instances)
    group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    if dim is not None:
        names = contract.INPUT_NAMES + (contract.SIDE_INPUT_NAMES if side_inputs else ())
        for tensor in names:
            config.input.add(name=tensor, data_type=_DTYPES[tensor], dims=_dims(tensor, dim))
        for tensor in contract.OUTPUT_NAMES + ((contract.ATTENTION,) if attention else ()):
            config.output.add(name=tensor, data_type=_DTYPES[tensor], dims=_dims(tensor, dim))
    return config


def _dims(tensor_name: str, dim: int) -> list[int]:
    return [dim if d == "D" else d for d in _DIMS[tensor_name]]


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def to_json(config: mc.ModelConfig) -> str:
    """The form Triton's model control API takes as a config override."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def committed_configs() -> dict[str, str]:
    """The committed repository's configs: relative path -> pbtxt text."""
    header = (
        "# Rendered by `reaseq triton repository` from reaseq/core/triton_config.py;\n"
        "# tensors come from the model file (Triton auto-complete).\n"
    )
    configs = {
        MODEL_NAME: model_config("onnxruntime"),
        FP16_MODEL_NAME: model_config("onnxruntime", name=FP16_MODEL_NAME, gpu=True),
        TRT_MODEL_NAME: model_config("tensorrt", name=TRT_MODEL_NAME, gpu=True),
    }
    return {f"{name}/config.pbtxt": header + to_pbtxt(c) for name, c in configs.items()}
