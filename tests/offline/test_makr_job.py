"""MAKR with real models: the embedded GGUFs (Gemma 3 270M default, SmolLM2-135M), a real
OpenAI-compatible server (llama-cpp-python's, on SmolLM2), resume after `kill -9`, the Ray engine,
shipped knowledge, and the representations built from it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from reaseq.offline import synthetic
from reaseq.offline.datasets import load_dataset
from reaseq.offline.makr.job import CACHE_FILE, MakrConfig, MakrRun, ensure_knowledge
from reaseq.offline.makr.llm import LLMConfig, LLMError, Sampling, make_backend
from reaseq.offline.makr.schemas import KnowledgeRecord
from reaseq.offline.prepare import PrepareConfig, prepare
from tests.conftest import free_port

pytest.importorskip("llama_cpp", reason="MAKR tests need the makr extra (llama-cpp-python)")
SMALL = LLMConfig(model="smollm2-135m")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    folder = synthetic.generate(tmp_path_factory.mktemp("synthetic"), n_items=60, n_users=80)
    return folder, load_dataset(folder, name="synthetic").items


def _check(records: list[dict], n: int) -> None:
    assert len(records) == n
    assert len({r["item_id"] for r in records}) == n
    for record in records:
        parsed = KnowledgeRecord.model_validate(record)
        assert parsed.status in ("ok", "repaired", "flagged", "failed")
        assert (parsed.card is None) == (parsed.status == "failed")
        if parsed.status == "failed":
            assert parsed.failure


def _knowledge(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "knowledge.jsonl").read_text().splitlines()]


def test_embedded_default_model_runs_caches_and_reports(catalog, tmp_path):
    _, items = catalog
    cfg = MakrConfig(limit=2)  # the default: Gemma 3 270M, assembled and sha256-checked
    job = MakrRun(items, tmp_path, cfg)
    report = job.run()
    assert job.model.startswith("gemma3-270m@")
    assert report.generated == 2 and report.items == 2 and report.completion_tokens > 0
    assert report.items_per_s > 0 and report.tokens_per_s > 0
    _check(_knowledge(tmp_path), 2)
    again = MakrRun(items, tmp_path, cfg)
    second = again.run()
    assert (second.from_cache, second.generated) == (2, 0)
    assert again._agents is None  # nothing missing: the model is never loaded


def test_shipped_knowledge_seeds_a_fresh_cache(catalog, tmp_path):
    _, items = catalog
    cfg = MakrConfig(llm=SMALL, limit=2)
    first = MakrRun(items, tmp_path / "a", cfg)
    first.run()
    shipped = tmp_path / "shipped"
    assert first.export(shipped / "synthetic.jsonl.gz") == 2
    fresh = MakrRun(items, tmp_path / "b", replace(cfg, shipped_dir=shipped), dataset="synthetic")
    assert fresh.seeded == 2 + len(fresh.plans())
    report = fresh.run()
    assert (report.from_cache, report.generated) == (2, 0)
    assert fresh._agents is None


@pytest.mark.timeout(900)  # a real LLM on 2 shared cores
def test_run_killed_mid_way_continues_where_it_stopped(catalog, tmp_path):
    folder, _ = catalog
    work = tmp_path / "work"
    cmd = [
        sys.executable, "-m", "reaseq.cli", "makr", "run", str(folder), "--model",
        "smollm2-135m", "--limit", "5", "--threads", "1", "--work", str(work),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_at_kill = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (work / CACHE_FILE).exists():
            with sqlite3.connect(work / CACHE_FILE) as db:
                done_at_kill = db.execute("SELECT count(*) FROM items").fetchone()[0]
            if done_at_kill >= 2:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout[rerun.stdout.index("{") : rerun.stdout.rindex("}") + 1])
    assert report["items"] == 5
    assert report["from_cache"] >= done_at_kill >= 2
    assert report["generated"] == 5 - report["from_cache"]
    _check(_knowledge(work), 5)


@pytest.mark.timeout(900)  # a real LLM on 2 shared cores
def test_ray_engine_runs_the_same_job(catalog, tmp_path):
    pytest.importorskip("ray")
    _, items = catalog
    cfg = MakrConfig(llm=SMALL, limit=2, engine="ray", workers=1)
    report = MakrRun(items, tmp_path, cfg).run()
    assert report.engine == "ray" and report.generated == 2
    _check(_knowledge(tmp_path), 2)
    local = MakrRun(items, tmp_path, replace(cfg, engine="local")).run()
    assert local.from_cache == 2  # same keys: either engine fills the same cache


@pytest.fixture(scope="module")
def endpoint() -> str:
    """llama-cpp-python's OpenAI-compatible server on the shipped SmolLM2 GGUF."""
    from reaseq.offline.makr.llm import resolve_model_path

    port = free_port()
    model = resolve_model_path("smollm2-135m")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start")
    yield base
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_openai_endpoint_chat_and_json_schema(endpoint):
    llm = make_backend(
        LLMConfig(backend="openai", model="smollm2", base_url=endpoint, json_format="json_object")
    )
    done = llm.complete("Name one office product.", Sampling(max_tokens=12, stop=["\n"]))
    assert done.text.strip() and done.completion_tokens > 0
    schema = {
        "type": "object",
        "properties": {"kind": {"type": "string", "maxLength": 20}},
        "required": ["kind"],
    }
    out = llm.complete("A stapler as JSON:", Sampling(max_tokens=40, json_schema=schema))
    assert set(json.loads(out.text)) == {"kind"}


@pytest.mark.timeout(900)  # a real LLM on 2 shared cores
def test_openai_endpoint_runs_the_job_concurrently(endpoint, catalog, tmp_path):
    _, items = catalog
    llm = LLMConfig(backend="openai", model="smollm2", base_url=endpoint, concurrency=2)
    report = MakrRun(items, tmp_path, MakrConfig(llm=llm, limit=2)).run()
    assert report.generated == 2 and report.model == "openai:smollm2"
    _check(_knowledge(tmp_path), 2)


def test_endpoint_down_is_a_fast_clear_error():
    port = free_port()  # nothing listens here
    llm = make_backend(
        LLMConfig(backend="openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    )
    t0 = time.monotonic()
    with pytest.raises(LLMError, match=f"127.0.0.1:{port}"):
        llm.complete("hello", Sampling(max_tokens=4))
    assert time.monotonic() - t0 < 10


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        make_backend(LLMConfig(model=str(tmp_path / "missing.gguf")))


@pytest.mark.timeout(900)  # a real LLM on 2 shared cores: over 300 s under load (seen in CI)
def test_makr_and_hybrid_representations_from_partial_knowledge(catalog, tmp_path):
    """Three items with knowledge, the rest fall back to raw text (and are counted)."""
    from reaseq.offline.makr.encode import cointeraction_pairs, representation_report
    from reaseq.offline.makr.retrieval import heldout_pairs

    folder, _ = catalog
    data = prepare(load_dataset(folder, name="synthetic"), PrepareConfig())
    records = ensure_knowledge(data, tmp_path, MakrConfig(llm=SMALL, limit=3))
    assert len(records) == 3
    report = representation_report(data, records, tmp_path / "reps")
    assert set(report) == {"title-only", "text", "makr", "hybrid", "_meta"}
    assert report["_meta"]["items_without_card"] == len(data.items) - 3
    for name in ("makr", "hybrid"):
        reps = np.load(tmp_path / "reps" / name / "item_reps.npy")
        assert reps.shape == (len(data.items), 64) and np.isfinite(reps).all()
        assert 0 <= report[name]["sm_hr@1"] <= report[name]["sm_hr@10"] <= 1
    # the projector never sees a held-out co-interaction
    train = {tuple(p) for p in cointeraction_pairs(data, 1).tolist()}
    beh = data.train_period_behaviors()
    later = set()
    for a, nbrs in heldout_pairs(data).items():
        later |= {(a, b) for b in nbrs}
    assert train and later - train  # held-out pairs exist beyond the train pairs
    assert len(beh) < len(data.beh_items)


def test_cli_run_reports_a_bad_dataset_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "reaseq.cli", "makr", "run", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "neither a path nor a known dataset" in out.stderr
    assert "Traceback" not in out.stderr


def test_pipeline_trains_and_exports_id_makr_and_id_hybrid(tmp_path):
    """The MAKR kinds go through train and export with nothing changed downstream (here on
    cached knowledge only: generate=False encodes items without a record from raw text)."""
    from reaseq.core.release import read_manifest
    from reaseq.offline.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(dataset="synthetic", artifacts_dir=tmp_path)
    cfg.features = ("id+makr", "id+hybrid")
    cfg.export_features = "id+hybrid"
    cfg.train.epochs = 1
    cfg.train.ranker.max_behaviors = 10
    cfg.makr.generate = False
    result = run_pipeline(cfg, log=lambda _msg: None)
    assert set(result.report["results"]) == {"id+makr", "id+hybrid"}
    for features in cfg.features:
        assert 0 < result.report["results"][features]["test"]["auc"] <= 1
    assert read_manifest(result.release_dir).features == "id+hybrid"


def test_corrupted_cache_row_is_generated_again_not_served(catalog, tmp_path):
    from reaseq.offline.makr.agents import Agents
    from tests.offline.test_makr_agents import GOOD, Scripted

    _, items = catalog
    cfg = MakrConfig(llm=SMALL, limit=2)
    job = MakrRun(items, tmp_path, cfg)
    job._agents = Agents(Scripted(GOOD))  # the cache logic under test, not the model
    job.run()
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:
        key = db.execute("SELECT key FROM items LIMIT 1").fetchone()[0]
        db.execute("UPDATE items SET record = ? WHERE key = ?", ('{"item_id": 1, "sta', key))
        other = db.execute("SELECT key FROM items WHERE key != ?", (key,)).fetchone()[0]
        db.execute("UPDATE items SET record = ? WHERE key = ?", ('{"status": "weird"}', other))
    again = MakrRun(items, tmp_path, cfg)
    again._agents = Agents(Scripted(GOOD))
    report = again.run()
    assert (report.from_cache, report.generated) == (0, 2)
    assert again.cache.dropped == 2
    _check(_knowledge(tmp_path), 2)


@pytest.mark.parametrize(
    "content",
    [b"not gzip at all", b"\x1f\x8b\x08\x00garbage", 'gz:{"type": "item", "key": 1}\n'],
)
def test_corrupt_shipped_knowledge_is_refused_whole(catalog, tmp_path, content):
    import gzip

    _, items = catalog
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    path = shipped / "synthetic.jsonl.gz"
    if isinstance(content, str):
        path.write_bytes(gzip.compress(content.removeprefix("gz:").encode()))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"synthetic\.jsonl\.gz"):
        MakrRun(items, tmp_path / "w", MakrConfig(llm=SMALL, shipped_dir=shipped), "synthetic")
    with sqlite3.connect(tmp_path / "w" / CACHE_FILE) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone()[0] == 0


def test_endpoint_outage_stops_the_run_and_caches_no_failures(catalog, tmp_path):
    _, items = catalog
    dead = f"http://127.0.0.1:{free_port()}/v1"
    llm = LLMConfig(backend="openai", model="m", base_url=dead, max_retries=0, concurrency=2)
    job = MakrRun(items, tmp_path, MakrConfig(llm=llm, limit=3))
    with pytest.raises(LLMError, match="failed"):
        job.run()
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM plans").fetchone()[0] == 0


def test_a_limited_trial_is_found_by_a_full_catalog_pass(catalog, tmp_path):
    """--limit changes which items run, not their keys: plans always see the whole catalog."""
    from reaseq.offline.makr.agents import Agents
    from tests.offline.test_makr_agents import GOOD, Scripted

    _, items = catalog
    trial = MakrRun(items, tmp_path, MakrConfig(llm=SMALL, limit=3))
    trial._agents = Agents(Scripted(GOOD | {"Attributes": "size, color"}))
    trial.run()
    full = MakrRun(items, tmp_path, MakrConfig(llm=SMALL, generate=False))
    report = full.run()
    assert report.from_cache == 3 and report.generated == 0
    assert report.without_record == len(items) - 3


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--engine", "spark", "not one of local, ray"),
        ("--output", "xml", "not one of fields, json"),
        ("--limit", "-1", "Invalid value for '--limit'"),
        ("--workers", "0", "Invalid value for '--workers'"),
    ],
)
def test_cli_run_refuses_bad_options_before_any_work(tmp_path, option, value, says):
    out = subprocess.run(
        [sys.executable, "-m", "reaseq.cli", "makr", "run", "synthetic", option, value,
         "--artifacts", str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "synthetic" / "makr").exists()


def test_pipeline_cli_reports_corrupt_shipped_knowledge_in_one_line(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "synthetic.jsonl.gz").write_bytes(b"garbage")
    config = tmp_path / "pipeline.toml"
    config.write_text(f'[makr]\nshipped_dir = "{shipped}"\n')  # a TOML string becomes a Path
    out = subprocess.run(
        [sys.executable, "-m", "reaseq.cli", "pipeline", "synthetic", "--features", "id+makr",
         "--no-publish", "--artifacts", str(tmp_path / "a"), "--config", str(config)],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "synthetic.jsonl.gz: not a readable .jsonl.gz" in out.stderr
    assert "Traceback" not in out.stderr


def test_items_with_one_text_share_one_generation_and_each_get_the_record(catalog, tmp_path):
    from reaseq.offline.makr.agents import Agents
    from tests.offline.test_makr_agents import GOOD, Scripted

    _, items = catalog
    items = items.copy()
    for column in ("title", "text", "category"):
        items.loc[1, column] = items.loc[0, column]
    job = MakrRun(items, tmp_path, MakrConfig(llm=SMALL, limit=3))
    job._agents = Agents(Scripted(GOOD))
    report = job.run()
    assert report.generated == 2 and report.without_record == 0
    by_item = {r["item_id"]: r for r in _knowledge(tmp_path)}
    first, second = (str(items.loc[i, "item_id"]) for i in (0, 1))
    assert {first, second} <= by_item.keys()
    assert by_item[first]["card"] == by_item[second]["card"]
