"""Write releases' models into a Triton model repository (`model_repository/` by default).

Layout (Triton's contract): `<model>/config.pbtxt` (committed, rendered from
reaseq.core.triton_config.py) and `<model>/<version>/model.onnx`, produced here and ignored by
git. A release's version number is its creation time in microseconds since the epoch: versions grow
with every export, so the default `latest: 1` policy of a standard Triton image serves the newest,
and every machine derives the same number from the manifest.

Beside the fp32 model goes an FP16 variant (`reaseq_ranker_fp16`: weights and activations in
half precision, inputs and outputs still fp32, so callers do not change), written only if its
scores stay within `FP16_PARITY_BOUND` of the fp32 model's on random inputs; the bound and the
measured difference are printed. TensorRT engines are built from the ONNX file on a machine that
has TensorRT (`reaseq triton build-engine`).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from reaseq.core import contract
from reaseq.core.release import MODEL_FILE, read_manifest
from reaseq.core.triton_config import (
    FP16_MODEL_NAME,
    MODEL_NAME,
    TRT_MODEL_NAME,
    committed_configs,
)

FP16_PARITY_BOUND = 2e-3  # max abs difference in click probability, fp16 vs fp32
ENGINE_FILE = "model.plan"


def release_version(created_at: str) -> int:
    """The Triton version of a release: its creation time in µs since the epoch."""
    moment = dt.datetime.fromisoformat(created_at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def write_configs(repository: Path) -> list[Path]:
    written = []
    for relative, text in committed_configs().items():
        path = repository / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def fp16_model(model_bytes: bytes) -> bytes:
    """The same graph in half precision, fp32 at its inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load_from_string(model_bytes)
    return convert_float_to_float16(model, keep_io_types=True).SerializeToString()


def random_inputs(session: ort.InferenceSession, batch: int = 4, seed: int = 0) -> dict:
    """Inputs shaped like served requests: 50 candidates, 30 behaviors, a few padded."""
    rng = np.random.default_rng(seed)
    names = {i.name for i in session.get_inputs()}
    dim = session.get_inputs()[0].shape[-1]
    mask = (rng.random((batch, 30)) > 0.1).astype(np.float32)
    feeds = {
        contract.CANDIDATES: rng.normal(0, 0.5, (batch, 50, dim)).astype(np.float32),
        contract.BEHAVIORS: rng.normal(0, 0.5, (batch, 30, dim)).astype(np.float32),
        contract.BEHAVIOR_MASK: mask,
        contract.BEHAVIOR_GAP_BUCKETS: rng.integers(0, contract.N_GAP_BUCKETS, (batch, 30)),
        contract.BEHAVIOR_GENERATED: (rng.random((batch, 30)) > 0.8).astype(np.float32),
    }
    return {k: v for k, v in feeds.items() if k in names}


def parity(reference: bytes, variant: bytes) -> float:
    """Max abs score difference between two models on the same random inputs."""
    a = ort.InferenceSession(reference, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(variant, providers=["CPUExecutionProvider"])
    feeds = random_inputs(a)
    (sa,) = a.run([contract.SCORES], feeds)
    (sb,) = b.run([contract.SCORES], feeds)
    return float(np.abs(sa - sb).max())


@dataclass
class Written:
    version: int
    paths: list[Path]
    fp16_diff: float


def add_release(release_dir: Path, repository: Path, fp16: bool = True) -> Written:
    """Add one release's model (and its FP16 variant) as a new version; configs too if absent."""
    manifest = read_manifest(release_dir)
    model_bytes = (release_dir / MODEL_FILE).read_bytes()
    version = release_version(manifest.created_at)
    diff, half = float("nan"), None
    if fp16:  # checked before anything is written: a failed add leaves the repository as it was
        half = fp16_model(model_bytes)
        diff = parity(model_bytes, half)
        if diff > FP16_PARITY_BOUND:
            raise ValueError(
                f"FP16 variant of {manifest.release} differs from fp32 by {diff:.2e} "
                f"(bound {FP16_PARITY_BOUND:.0e}); not written"
            )
    if not (repository / MODEL_NAME / "config.pbtxt").exists():
        write_configs(repository)
    paths = [_write(repository / MODEL_NAME / str(version) / MODEL_FILE, model_bytes)]
    if half is not None:
        paths.append(_write(repository / FP16_MODEL_NAME / str(version) / MODEL_FILE, half))
    return Written(version, paths, diff)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # Triton polling never sees half a file
    return path


def engine_command(
    onnx_path: Path, engine_path: Path, dim: int, side_inputs: bool, max_batch: int = 64
) -> list[str]:
    """trtexec's command for a TensorRT engine with the served shape ranges (fp16)."""

    def shapes(batch: int, cands: int, behaviors: int) -> str:
        per_behavior = contract.BEHAVIOR_MASK, *(contract.SIDE_INPUT_NAMES if side_inputs else ())
        return ",".join(
            [
                f"{contract.CANDIDATES}:{batch}x{cands}x{dim}",
                f"{contract.BEHAVIORS}:{batch}x{behaviors}x{dim}",
                *(f"{name}:{batch}x{behaviors}" for name in per_behavior),
            ]
        )

    return [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        "--fp16",
        f"--minShapes={shapes(1, 1, 1)}",
        f"--optShapes={shapes(max_batch // 2, 200, 100)}",
        f"--maxShapes={shapes(max_batch, 1000, 100)}",
    ]


def build_engine(release_dir: Path, repository: Path, max_batch: int = 64) -> Path:
    """A TensorRT engine of the release's model as a `reaseq_ranker_trt` version."""
    if shutil.which("trtexec") is None:
        raise FileNotFoundError(
            "trtexec (TensorRT) is not installed here: build engines on a GPU machine with "
            "TensorRT, e.g. inside the nvcr.io/nvidia/tritonserver image"
        )
    manifest = read_manifest(release_dir)
    version = release_version(manifest.created_at)
    engine = repository / TRT_MODEL_NAME / str(version) / ENGINE_FILE
    engine.parent.mkdir(parents=True, exist_ok=True)
    side_inputs = manifest.value_format == 2
    command = engine_command(
        release_dir / MODEL_FILE, engine, manifest.vector_dim, side_inputs, max_batch
    )
    subprocess.run(command, check=True)
    return engine
