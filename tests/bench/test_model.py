"""`reaseq bench-model`: model-only throughput on cpu here; cuda where onnxruntime has CUDA, and a
clear start-up error where it does not (service and benchmark alike)."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from reaseq.cli import app
from reaseq.service.errors import DeviceUnavailable
from reaseq.service.ranking import Ranker

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_bench_model_reports_candidates_per_second(pipeline_run) -> None:
    args = ["bench-model", "--release", str(pipeline_run.release_dir), "--seconds", "0.2"]
    result = CliRunner().invoke(app, [*args, "--requests-per-call", "1,4"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "M cand/s" in line]
    assert len(lines) == 2 and lines[1].startswith("cpu     4 x 200 x 100")


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here: the refusal is not reachable")
def test_cuda_without_a_cuda_onnxruntime_is_one_clear_error(pipeline_run, service_settings):
    result = CliRunner().invoke(
        app, ["bench-model", "--release", str(pipeline_run.release_dir), "--device", "cuda"]
    )
    assert result.exit_code == 2 and "no CUDA provider" in result.output

    import asyncio

    with pytest.raises(DeviceUnavailable, match="install onnxruntime-gpu"):
        asyncio.run(Ranker.open(service_settings.model_copy(update={"model_device": "cuda"})))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA-enabled onnxruntime here (CI has no GPU)")
def test_bench_model_on_cuda(pipeline_run) -> None:
    args = ["bench-model", "--release", str(pipeline_run.release_dir), "--device", "cuda"]
    result = CliRunner().invoke(app, [*args, "--seconds", "0.5", "--requests-per-call", "1,64"])
    assert result.exit_code == 0, result.output
