"""`reaseq bench-matrix` end to end on the synthetic release: every system it starts (floor, naive,
the service on the local backend, and on Triton when tritonserver is here) answers every cell
without an error, and the report files hold positive numbers. The numbers are not asserted."""

import json
import os

import pytest
from typer.testing import CliRunner

from reaseq.bench.matrix import MatrixConfig, add_ratios, plan_systems
from reaseq.bench.report import JSON_FILE, MARKDOWN_FILE, PLOT_FILE
from reaseq.cli import app
from reaseq.service.triton.server import TritonNotInstalled, binary_path


def _have_triton() -> bool:
    try:
        return binary_path().exists()
    except TritonNotInstalled:
        return False


def test_a_tiny_matrix_measures_every_system_without_errors(pipeline_run, tmp_path) -> None:
    backends = "local"
    if _have_triton():
        backends = "local,triton"
    elif os.environ.get("REASEQ_REQUIRE_TRITON"):
        pytest.fail("REASEQ_REQUIRE_TRITON is set but tritonserver is not installed")
    out = tmp_path / "report"
    args = ["bench-matrix", "--release", str(pipeline_run.release_dir), "--out", str(out)]
    args += ["--backends", backends, "--transports", "grpc,http", "--candidates", "20"]
    args += ["--behaviors", "10", "--concurrency", "2", "--requests", "12", "--warmup", "4"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output

    report = json.loads((out / JSON_FILE).read_text())
    assert (out / PLOT_FILE).stat().st_size > 0
    markdown = (out / MARKDOWN_FILE).read_text()
    systems = ["floor", "naive", *(f"service-{b}" for b in backends.split(","))]
    cells = report["cells"]
    assert sorted((r["system"], r["transport"]) for r in cells) == sorted(
        (s, t) for s in systems for t in ("grpc", "http")
    )
    for row in cells:
        assert row["errors"] == 0 and row["ok"] == row["requests"] == 12, row
        assert row["n_candidates"] == 20 and row["n_recent"] == 10 and row["concurrency"] == 2
        for name in ("p50_ms", "p99_ms", "throughput_rps", "candidates_per_s", "x_naive"):
            assert row[name] > 0, (name, row)
        assert row["x_floor"] > 0 and f"| {row['system']} | {row['transport']} |" in markdown
    assert report["meta"]["release"] == pipeline_run.release_dir.name


def test_ratios_are_against_the_same_cell_of_naive_and_floor() -> None:
    def row(system: str, rps: float, concurrency: int = 1) -> dict:
        cell = {"transport": "grpc", "n_candidates": 200, "n_recent": 100}
        return (
            cell
            | {"system": system, "concurrency": concurrency, "throughput_rps": rps}
            | {"p50_ms": 1000 / rps}
        )

    rows = add_ratios(
        [row("floor", 800), row("naive", 100), row("service-local", 200), row("naive", 50, 8)]
    )
    service = rows[2]
    assert service["x_naive"] == 2.0 and service["x_floor"] == 0.25
    assert service["p50_over_floor_ms"] == pytest.approx(5 - 1.25)
    assert rows[3]["x_floor"] is None  # no floor measured at concurrency 8


def test_config_refuses_what_it_cannot_measure(pipeline_run, tmp_path) -> None:
    release = pipeline_run.release_dir
    with pytest.raises(ValueError, match="not a release folder"):
        MatrixConfig(release=tmp_path)
    with pytest.raises(ValueError, match="backends: onnx"):
        MatrixConfig(release=release, backends=("onnx",))
    with pytest.raises(ValueError, match="concurrency"):
        MatrixConfig(release=release, concurrency=(0,))
    with pytest.raises(ValueError, match="nothing to measure"):
        MatrixConfig(release=release, backends=(), floor=False, naive=False)
    only_floor = MatrixConfig(release=release, backends=(), naive=False)
    assert [s.name for s in plan_systems(only_floor)] == ["floor"]
