"""`reaseq triton repository`: versioned model directories from releases, the FP16 variant within
its parity bound, and the TensorRT engine command (a clear error where TensorRT is missing)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from reaseq.cli import app
from reaseq.core.release import read_manifest
from reaseq.offline.model_repository import (
    FP16_PARITY_BOUND,
    add_release,
    engine_command,
    fp16_model,
    parity,
    release_version,
)


def test_repository_gets_a_version_per_release_and_an_fp16_variant(
    pipeline_run, second_release: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model_repository"
    runner = CliRunner()
    args = ["triton", "repository", "--out", str(out)]
    for release in (pipeline_run.release_dir, second_release):
        result = runner.invoke(app, [*args, "--release", str(release)])
        assert result.exit_code == 0, result.output
        assert "FP16 variant: max |Δscore|" in result.output
    versions = sorted(int(p.name) for p in (out / "reaseq_ranker").iterdir() if p.is_dir())
    expected = sorted(
        release_version(read_manifest(r).created_at)
        for r in (pipeline_run.release_dir, second_release)
    )
    assert versions == expected, "one directory per release, numbered by creation time"
    assert (out / "reaseq_ranker" / "config.pbtxt").exists()
    for version in versions:
        half = out / "reaseq_ranker_fp16" / str(version) / "model.onnx"
        session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
        assert {i.type for i in session.get_inputs()} >= {"tensor(float)"}, "fp32 at the inputs"


def test_fp16_variant_stays_within_its_bound_and_the_bound_can_fail(
    pipeline_run, tmp_path: Path, monkeypatch
) -> None:
    model = (pipeline_run.release_dir / "model.onnx").read_bytes()
    half = fp16_model(model)
    diff = parity(model, half)
    assert 0 < diff <= FP16_PARITY_BOUND, "half precision changes scores, a little"
    assert parity(model, model) == 0.0
    monkeypatch.setattr("reaseq.offline.model_repository.FP16_PARITY_BOUND", diff / 2)
    with pytest.raises(ValueError, match="not written"):
        add_release(pipeline_run.release_dir, tmp_path / "repo")
    assert not (tmp_path / "repo").exists(), "nothing written"


def test_release_versions_grow_with_creation_time() -> None:
    a = release_version("2026-11-27T10:00:00.000001+00:00")
    b = release_version("2026-11-27T10:00:00.000002+00:00")
    assert b == a + 1 and a > 1_700_000_000_000_000


def test_engine_build_names_trtexec_shapes_and_fails_clearly_without_tensorrt(
    pipeline_run, tmp_path: Path
) -> None:
    command = engine_command(Path("m.onnx"), Path("m.plan"), dim=96, side_inputs=True)
    assert command[0] == "trtexec" and "--fp16" in command
    max_shapes = next(c for c in command if c.startswith("--maxShapes="))
    assert "candidates:64x1000x96" in max_shapes and "behavior_generated:64x100" in max_shapes
    three_inputs = engine_command(Path("m.onnx"), Path("m.plan"), dim=8, side_inputs=False)
    assert "behavior_generated" not in " ".join(three_inputs)
    if shutil.which("trtexec"):
        pytest.skip("TensorRT is installed here; the missing-TensorRT path is not reachable")
    result = CliRunner().invoke(
        app, ["triton", "build-engine", str(pipeline_run.release_dir), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "trtexec (TensorRT) is not installed" in result.output
