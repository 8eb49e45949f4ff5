"""Model-only throughput of a release's ONNX model in the service's backend (no transport, no
features): candidates per second at several requests per call, on `cpu` or `cuda`.

This is the figure issue 15's GPU goal is stated in (>= 100 M candidates/s in the served
backend), and the CPU ceiling every end-to-end number sits under.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reaseq.core import contract
from reaseq.core.release import MODEL_FILE
from reaseq.service.backend import OnnxRuntimeBackend


@dataclass
class ModelRow:
    device: str
    requests_per_call: int
    candidates: int
    behaviors: int
    calls: int
    ms_per_call: float  # median
    candidates_per_s: float  # from the median call

    def line(self) -> str:
        return (
            f"{self.device} {self.requests_per_call:>5} x {self.candidates} x {self.behaviors}: "
            f"{self.ms_per_call:8.3f} ms/call  {self.candidates_per_s / 1e6:8.3f} M cand/s "
            f"({self.calls} calls)"
        )


def random_inputs(
    batch: int, candidates: int, behaviors: int, dim: int, seed: int = 0
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(0, 0.5, (batch, candidates, dim)).astype(np.float32),
        rng.normal(0, 0.5, (batch, behaviors, dim)).astype(np.float32),
        np.ones((batch, behaviors), np.float32),
        np.full((batch, behaviors), contract.GAP_LOG_BASE, np.int64),
        np.zeros((batch, behaviors), np.float32),
    )


def bench_model(
    release_dir: Path,
    device: str = "cpu",
    requests_per_call: tuple[int, ...] = (1, 16, 256),
    candidates: int = 200,
    behaviors: int = 100,
    seconds: float = 2.0,
    threads: int = 1,
) -> list[ModelRow]:
    backend = OnnxRuntimeBackend(
        (release_dir / MODEL_FILE).read_bytes(), intra_op_threads=threads, device=device
    )
    rows = []
    for batch in requests_per_call:
        inputs = random_inputs(batch, candidates, behaviors, backend.dim)
        for _ in range(3):
            backend.score_sync(*inputs)
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            started = time.perf_counter()
            backend.score_sync(*inputs)
            times.append(time.perf_counter() - started)
        median = float(np.median(times))
        rows.append(
            ModelRow(
                device,
                batch,
                candidates,
                behaviors,
                len(times),
                median * 1e3,
                batch * candidates / median,
            )
        )
    return rows
