"""The release commands on a Redis Cluster, as a user runs them: `--redis-url redis-cluster://…`
publishes, lists, rolls back and activates across the masters; a bad cluster URL or a cluster
that does not answer is one clear line, exit code 2."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from reaseq.cli import app
from reaseq.core.redis_cluster import key_schema

runner = CliRunner()


def test_release_commands_on_a_cluster(
    redis_cluster, redis_cluster_client, pipeline_run, second_release, monkeypatch
) -> None:
    monkeypatch.setenv("REASEQ_REDIS_NAMESPACE", "clcli")
    store = ["--store", "redis", "--redis-url", redis_cluster.url]
    first = pipeline_run.release_dir.name
    for folder in (pipeline_run.release_dir, second_release):
        result = runner.invoke(app, ["publish", str(folder), *store])
        assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["release", "list", "--json", *store])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["release"], r["active"]) for r in rows] == [(first, False), ("second-release", True)]
    keys = key_schema("clcli", redis_cluster.url)
    result = runner.invoke(app, ["release", "rollback", *store])
    assert result.exit_code == 0 and f"rolled back to {first}" in result.output
    assert redis_cluster_client.get("{clcli}:active") == first.encode()
    assert redis_cluster_client.lrange(keys.history, 0, -1) == [
        first.encode(),
        b"second-release",
        first.encode(),
    ]
    result = runner.invoke(app, ["release", "activate", "second-release", *store])
    assert result.exit_code == 0, result.output
    assert redis_cluster_client.get(keys.active) == b"second-release"
    assert redis_cluster_client.get("clcli:active") is None  # single-node names stay unused


def test_a_bad_or_silent_cluster_is_one_clear_line(tmp_path) -> None:
    from tests.conftest import free_port

    bad = runner.invoke(
        app, ["release", "list", "--store", "redis", "--redis-url", "redis-cluster://h:1/3"]
    )
    assert bad.exit_code == 2
    assert "a cluster has database 0 only" in bad.stderr
    silent = f"redis-cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    down = runner.invoke(app, ["release", "list", "--store", "redis", "--redis-url", silent])
    assert down.exit_code == 2, down.output
    assert "error: Redis Cluster cannot be connected" in down.stderr
    assert isinstance(down.exception, SystemExit)
