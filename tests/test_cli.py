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
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["release"], r["active"]) for r in rows] == [(first, False), ("second-release", True)]
    result = runner.invoke(app, ["release", "rollback", *store])
    assert result.exit_code == 0 and f"rolled back to {first}" in result.output
    assert (tmp_path / "releases" / ACTIVE_FILE).read_text() == first
    result = runner.invoke(app, ["release", "activate", "second-release", *store])
    assert result.exit_code == 0
    assert (tmp_path / "releases" / ACTIVE_FILE).read_text() == "second-release"
    bad = runner.invoke(app, ["release", "activate", "no-such-release", *store])
    assert bad.exit_code == 2
    # the reason is one line, however narrow the terminal
    error = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "not a complete release" in error[0], bad.stderr
    assert (tmp_path / "releases" / ACTIVE_FILE).read_text() == "second-release"


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


TYPER_ACTIONS = {"help", "install_completion", "show_completion"}  # flags that act, no value


def _params(command, path: tuple[str, ...] = ()):
    """(command path, parameter) for every parameter of every command, groups included."""
    for param in command.params:
        yield path, param
    for name, sub in getattr(command, "commands", {}).items():
        yield from _params(sub, (*path, name))


def test_every_option_and_argument_has_help_and_shows_its_default() -> None:
    from typer._click.core import Context
    from typer.main import get_command

    root = get_command(app)
    missing = []
    for path, param in _params(root):
        record = param.get_help_record(Context(root, info_name="reaseq"))
        text = record[1] if record else ""
        described = text.split("  [")[0].strip()
        shown = "default:" in text or "[required]" in text or param.name in TYPER_ACTIONS
        if not described or not shown:
            missing.append(f"{' '.join(path)} {param.name}: {text!r}")
    assert not missing, "options without help or shown default:\n" + "\n".join(missing)


def test_release_commands_say_which_store_they_read(tmp_path, releases_dir, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the store is given relative to the current directory
    relative = ["--releases-dir", releases_dir.name]
    listed = runner.invoke(app, ["release", "list", *relative])
    assert listed.exit_code == 0, listed.output
    assert f"store: embedded {releases_dir.resolve()}" in listed.stderr
    active = (releases_dir / ACTIVE_FILE).read_text()
    assert listed.stdout.startswith(f"* {active}  model ")  # the whole id, even at 80 columns
    as_json = runner.invoke(app, ["release", "list", "--json", *relative])
    assert [json.loads(line)["active"] for line in as_json.stdout.splitlines()] == [True]
    (releases_dir / "broken").mkdir()
    (releases_dir / "broken" / "manifest.json").write_text("{not json")
    listed = runner.invoke(app, ["release", "list", *relative])
    assert listed.exit_code == 0, listed.output
    assert "  broken  unreadable: " in listed.stdout  # listed with its reason, not blank fields

    monkeypatch.setenv("REASEQ_RELEASES_DIR", str(tmp_path / "nowhere"))
    missing = runner.invoke(app, ["release", "list"], terminal_width=400)
    assert missing.exit_code == 2
    assert f"no release store at {tmp_path / 'nowhere'}" in missing.stderr
    assert not (tmp_path / "nowhere").exists()  # a read does not create an empty store


def test_release_list_names_the_redis_store_without_its_password(tmp_path, pipeline_run) -> None:
    from tests.conftest import RedisServer

    server = RedisServer(tmp_path, password="s3cret-pw")
    server.start()
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        store = ["--store", "redis", "--redis-url", url]
        published = runner.invoke(app, ["publish", str(pipeline_run.release_dir), *store])
        assert published.exit_code == 0, published.output
        listed = runner.invoke(app, ["release", "list", *store])
        assert listed.exit_code == 0, listed.output
        assert f"store: redis redis://:***@127.0.0.1:{server.port}/0 namespace reaseq" in (
            listed.stderr
        )
        assert pipeline_run.release_dir.name in listed.stdout
        assert "s3cret-pw" not in listed.output + published.output
    finally:
        server.stop()


def test_bench_says_where_its_ids_come_from_and_fails_clearly(tmp_path, releases_dir) -> None:
    from tests.conftest import free_port

    empty = tmp_path / "empty-store"
    empty.mkdir()
    result = runner.invoke(app, ["bench", "--releases-dir", str(empty)], terminal_width=400)
    assert result.exit_code == 2
    assert f"no active release in embedded {empty}" in result.stderr
    assert "--ids-from" in result.stderr

    # nothing listens on the port: every request fails, the first error is printed, exit 1
    target = f"127.0.0.1:{free_port()}"
    args = ["bench", "--target", target, "--requests", "5", "--concurrency", "1"]
    release = releases_dir / (releases_dir / ACTIVE_FILE).read_text()
    result = runner.invoke(app, [*args, "--ids-from", str(release)], terminal_width=400)
    assert result.exit_code == 1, result.output
    assert f"items from release folder {release}" in result.stderr
    assert "error: 5 requests failed; first: UNAVAILABLE" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])  # strict JSON: null, not NaN
    assert report["errors"] == 5 and report["p50_ms"] is None

    stored = runner.invoke(app, [*args, "--releases-dir", str(releases_dir)], terminal_width=400)
    assert stored.exit_code == 1
    assert f"items from release {release.name} in embedded {releases_dir}" in stored.stderr

    not_a_release = runner.invoke(app, [*args, "--ids-from", str(empty)], terminal_width=400)
    assert not_a_release.exit_code == 2
    assert "is not a release folder (no manifest.json)" in not_a_release.stderr
