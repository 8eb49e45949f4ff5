"""The `reaseq` command line as a user runs it: the README's run command (without serving) and
the release operations publish -> list -> rollback -> activate."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from reaseq.cli import app
from reaseq.core.release import ACTIVE_FILE

runner = CliRunner()


def test_demo_prepares_trains_exports_and_publishes(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--no-serve", "--releases-dir", "releases"])
    assert result.exit_code == 0, result.output
    assert "published and activated release" in result.output
    release = (tmp_path / "releases" / ACTIVE_FILE).read_text()
    assert (tmp_path / "releases" / release / "manifest.json").exists()
    report = (tmp_path / "artifacts" / "synthetic" / "report.md").read_text()
    assert "ranker `id+text`" in report and "baseline co-occurrence" in report


def test_release_list_rollback_activate(tmp_path, pipeline_run, second_release) -> None:
    store = ["--store", "embedded", "--releases-dir", str(tmp_path / "releases")]
    first = pipeline_run.release_dir.name
    for folder in (pipeline_run.release_dir, second_release):
        result = runner.invoke(app, ["publish", str(folder), *store])
        assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["release", "list", "--json", *store])
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["release"], r["active"]) for r in rows] == [(first, False), ("second-release", True)]
    result = runner.invoke(app, ["release", "rollback", *store])
    assert result.exit_code == 0 and f"rolled back to {first}" in result.output
    assert (tmp_path / "releases" / ACTIVE_FILE).read_text() == first
    result = runner.invoke(app, ["release", "activate", "second-release", *store])
    assert result.exit_code == 0
    assert (tmp_path / "releases" / ACTIVE_FILE).read_text() == "second-release"
    bad = runner.invoke(app, ["release", "activate", "no-such-release", *store])
    assert bad.exit_code == 2 and "not a complete release" in bad.output


def test_export_makes_a_new_release_from_a_trained_model(pipeline_run) -> None:
    artifacts = pipeline_run.work_dir.parent
    result = runner.invoke(
        app,
        ["export", "synthetic", "--features", "id", "--artifacts", str(artifacts)],
        terminal_width=400,
    )
    assert result.exit_code == 0, result.output
    assert "ONNX parity" in result.output
    exports = sorted((pipeline_run.work_dir / "exports").glob("synthetic-id-2*"))
    assert exports and (exports[-1] / "manifest.json").exists()
    missing = runner.invoke(app, ["export", "nope", "--artifacts", str(artifacts)])
    assert missing.exit_code == 2
