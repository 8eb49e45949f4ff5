"""`reaseq experiment` on the synthetic shop with tiny settings: runs per (variant, seed) on one
split, the report's statistics, resuming, the peer slot, and the bootstrap and bucket rules on
cases whose answer is known."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from reaseq.offline.experiment import (
    PEERS,
    RESULT_FILE,
    TEST_PRED_FILE,
    ExperimentConfig,
    ExperimentError,
    PeerPredictions,
    register_peer,
    run_experiment,
    split_samples,
)
from reaseq.offline.experiment_report import (
    paired_bootstrap,
    popularity_buckets,
    user_history_buckets,
)
from reaseq.offline.prepare import Prepared
from reaseq.offline.train import TrainConfig

VARIANTS = ("id", "id+text", "id+text+gbr", "train-popularity")
SEEDS = (0, 1)


def train_popularity_peer(
    data: Prepared, reps: Mapping[str, np.ndarray], seed: int, out_dir: Path, train: TrainConfig
) -> PeerPredictions:
    """A real (if weak) peer: the candidate's train-sample click count, squashed to (0, 1) and
    left uncalibrated, so the runner calibrates it on validation."""
    assert "text" in reps and reps["text"].shape[0] == data.n_items
    assert train.epochs == 1  # the experiment's budget reaches the peer
    train = split_samples(data, "train")
    clicks = np.bincount(train["item_row"], weights=train["label"], minlength=data.n_items)
    score = np.log1p(clicks)

    def predict(split: str) -> np.ndarray:
        return 1 / (1 + np.exp(-(score[split_samples(data, split)["item_row"]] - score.mean())))

    out_dir.mkdir(parents=True)
    (out_dir / "note.txt").write_text(f"seed {seed}")
    return PeerPredictions(predict("test"), predict("val"), calibrated=False, info={"seed": seed})


def tiny_config(artifacts: Path, out: Path) -> ExperimentConfig:
    from reaseq.models.gbr import GBRConfig
    from reaseq.offline.gbr.locate import LocateConfig
    from reaseq.offline.pipeline import PipelineConfig

    pipe = PipelineConfig(dataset="synthetic", artifacts_dir=artifacts)
    pipe.train.epochs, pipe.train.threads = 1, 1
    pipe.train.ranker.max_behaviors = 24
    pipe.gbr.train.epochs, pipe.gbr.train.threads = 1, 1
    pipe.gbr.train.model = GBRConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, max_len=24)
    pipe.gbr.fill.locate = LocateConfig(min_votes=1, max_slots=2, window=10)
    return ExperimentConfig(
        pipeline=pipe,
        variants=VARIANTS,
        seeds=SEEDS,
        out_dir=out,
        comparisons=(("id+text+gbr", "id+text"), ("id+text+gbr", "id"), ("id", "absent")),
        bootstrap=200,
        latency_seconds=0.1,
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("experiment")
    register_peer("train-popularity", train_popularity_peer, needs=("text",))
    try:
        cfg = tiny_config(root / "artifacts", root / "out")
        yield cfg, run_experiment(cfg, log=lambda _msg: None)
    finally:
        PEERS.pop("train-popularity", None)


def results(out: Path) -> dict[tuple[str, int], dict]:
    return {
        (v, s): json.loads((out / "runs" / v / f"seed{s}" / RESULT_FILE).read_text())
        for v in VARIANTS
        for s in SEEDS
    }


def test_every_run_is_written_and_the_report_averages_them(experiment) -> None:
    _, result = experiment
    assert sorted(result.trained) == sorted((v, s) for v in VARIANTS for s in SEEDS)
    assert not result.failed and not result.skipped
    for name in ("report.md", "report.json", "gauc.png"):
        assert (result.out_dir / name).stat().st_size > 0
    saved = json.loads((result.out_dir / "report.json").read_text())
    runs = results(result.out_dir)
    for variant in VARIANTS:
        for metric in ("auc", "gauc", "logloss"):
            values = [runs[(variant, s)]["test"][metric] for s in SEEDS]
            stat = saved["variants"][variant]["test"][metric]
            assert stat["mean"] == pytest.approx(np.mean(values))
            assert stat["std"] == pytest.approx(np.std(values, ddof=1))
    markdown = (result.out_dir / "report.md").read_text()
    gauc = saved["variants"]["id+text"]["test"]["gauc"]
    assert f"{gauc['mean']:.4f} ± {gauc['std']:.4f}" in markdown
    assert "id+text+gbr - id+text" in markdown and "Sparsity buckets" in markdown
    assert saved["comparisons"]["id - absent"] == {"skipped": "no seed finished by both variants"}


def test_seeds_share_the_split_and_change_only_the_ranker(experiment) -> None:
    _, result = experiment
    runs = results(result.out_dir)
    assert {r["data_fingerprint"] for r in runs.values()} == {result.report["data_fingerprint"]}
    gbr = [runs[("id+text+gbr", s)] for s in SEEDS]
    assert gbr[0]["reps_fingerprint"] == gbr[1]["reps_fingerprint"]  # one representation
    assert gbr[0]["upstream"]["gbr"]["out_dir"] == gbr[1]["upstream"]["gbr"]["out_dir"]  # one GBR
    preds = [np.load(result.out_dir / "runs" / "id" / f"seed{s}" / TEST_PRED_FILE) for s in SEEDS]
    assert not np.array_equal(*preds)  # the seed does reach the ranker
    assert "split and the sampled negatives" in result.report["seeding"]


def test_buckets_partition_the_test_users_and_samples(experiment) -> None:
    _, result = experiment
    test = json.loads((result.out_dir / "report.json").read_text())
    n_samples = test["data"]["samples"]["test"]
    users = test["buckets"]["user_history"]
    items = test["buckets"]["item_popularity"]
    assert sum(b["samples"] for b in users) == n_samples
    assert sum(b["users"] for b in users) == test["data"]["n_users"]  # each user in one bucket
    assert sum(b["samples"] for b in items) == n_samples
    for row in (*users, *items):
        assert set(row["variants"]) == set(VARIANTS)


def test_the_peer_is_reported_beside_the_rankers_and_calibrated_on_validation(experiment) -> None:
    _, result = experiment
    run = results(result.out_dir)[("train-popularity", 0)]
    assert run["peer"] == "train-popularity" and run["calibration"]["method"] == "platt"
    assert run["test"]["logloss"] < run["test_uncalibrated"]["logloss"]
    assert run["test"]["auc"] == pytest.approx(run["test_uncalibrated"]["auc"])
    assert (result.out_dir / "runs" / "train-popularity" / "seed0" / "peer" / "note.txt").exists()
    assert "`train-popularity` | peer |" in (result.out_dir / "report.md").read_text()


def test_cost_is_measured_once_per_ranker_variant(experiment) -> None:
    _, result = experiment
    cost = result.report["cost"]
    for variant in ("id", "id+text", "id+text+gbr"):
        assert cost[variant]["model_bytes"] > 0 and cost[variant]["latency_ms_per_request"] > 0
        assert cost[variant]["store_bytes_embedded"] > cost[variant]["model_bytes"]
    assert cost["id"]["gauc_gain"] == 0.0
    assert cost["id+text+gbr"]["gbr_train_seconds"] > 0 and "gbr_train_seconds" not in cost["id"]
    assert cost["id+text"]["model_bytes"] > cost["id"]["model_bytes"]  # the representation adapter
    runs = results(result.out_dir)
    assert "cost" in runs[("id", 0)] and "cost" not in runs[("id", 1)]


def test_a_rerun_skips_finished_runs_and_redoes_only_a_missing_one(experiment) -> None:
    cfg, first = experiment
    runs = first.out_dir / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob(f"*/seed*/{RESULT_FILE}")}
    shutil.rmtree(runs / "id" / "seed1")
    (runs / "id" / ".seed1.tmp-99999").mkdir()  # what a killed run leaves behind
    register_peer("train-popularity", train_popularity_peer, needs=("text",))
    try:
        again = run_experiment(cfg, log=lambda _msg: None)
    finally:
        PEERS.pop("train-popularity", None)
    assert again.trained == [("id", 1)]
    assert len(again.skipped) == len(VARIANTS) * len(SEEDS) - 1
    assert not (runs / "id" / ".seed1.tmp-99999").exists()
    for path, stamp in stamps.items():
        if "id/seed1" not in str(path):
            assert path.stat().st_mtime_ns == stamp, f"{path} was rewritten"
    # the retrained run is the same computation: seeded, one thread
    before = first.report["variants"]["id"]["test"]["gauc"]["values"]
    assert again.report["variants"]["id"]["test"]["gauc"]["values"] == before


def test_a_changed_configuration_is_refused_not_mixed_in(experiment) -> None:
    cfg, _ = experiment
    cfg.pipeline.train.epochs = 2
    cfg.variants = ("id",)
    try:
        with pytest.raises(ExperimentError, match="another configuration"):
            run_experiment(cfg, log=lambda _msg: None)
    finally:
        cfg.pipeline.train.epochs = 1
        cfg.variants = VARIANTS


# -- statistics on cases with a known answer ---------------------------------------------------
def toy_test_set(n_users: int = 300) -> tuple[np.ndarray, np.ndarray]:
    users = np.repeat(np.arange(n_users), 4)
    labels = np.tile([1, 0, 1, 0], n_users).astype(np.float64)
    return users, labels


def test_bootstrap_of_identical_predictions_is_exactly_zero() -> None:
    users, labels = toy_test_set()
    rng = np.random.default_rng(0)
    preds = [rng.random(len(users)) for _ in range(3)]
    got = paired_bootstrap(users, labels, preds, [p.copy() for p in preds], resamples=300)
    assert (got["estimate"], got["ci_low"], got["ci_high"]) == (0.0, 0.0, 0.0)


def test_bootstrap_of_a_perfect_against_a_constant_model_is_exactly_one_half() -> None:
    users, labels = toy_test_set()
    perfect, constant = labels + 0.1, np.full(len(labels), 0.5)  # AUC 1 vs 0.5 for every user
    got = paired_bootstrap(users, labels, [perfect], [constant], resamples=300)
    assert got["estimate"] == got["ci_low"] == got["ci_high"] == pytest.approx(0.5)


def test_bootstrap_of_a_better_model_is_above_zero_and_covers_its_estimate() -> None:
    users, labels = toy_test_set()
    rng = np.random.default_rng(1)
    noise = [rng.normal(size=len(users)) for _ in range(2)]
    better = [labels * 1.0 + n for n in noise]
    worse = [labels * 0.3 + n for n in noise]
    got = paired_bootstrap(users, labels, better, worse, resamples=500, seed=3)
    assert 0 < got["ci_low"] < got["estimate"] < got["ci_high"]
    assert got["share_le_0"] == 0.0 and got["seeds"] == 2


def test_bootstrap_refuses_unpaired_seeds() -> None:
    users, labels = toy_test_set(10)
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap(users, labels, [labels], [labels, labels])


def test_bucket_rules() -> None:
    lengths = np.array([0, 2, 3, 5, 6, 10, 11, 20, 21, 400])
    assert user_history_buckets(lengths, (0, 3, 6, 11, 21)) == [
        "0-2", "0-2", "3-5", "3-5", "6-10", "6-10", "11-20", "11-20", "21+", "21+",
    ]  # fmt: skip
    counts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 100])  # item 0 never seen in train
    assert popularity_buckets(counts, np.arange(10), 3) == [
        "cold (0)", "1-3", "1-3", "1-3", "4-6", "4-6", "4-6", "7-100", "7-100", "7-100",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="rise from 0"):
        user_history_buckets(lengths, (1, 3))


def test_cli_refuses_an_unknown_variant_in_one_line(tmp_path: Path) -> None:
    from reaseq.cli import app

    result = CliRunner().invoke(
        app, ["experiment", "synthetic", "--variants", "id,nope", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown variant 'nope'" in result.output and "full-learned" in result.output
