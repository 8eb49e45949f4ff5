"""Leakage guards: what each offline step may see.

* Early stopping, calibration and the choice among alternatives read validation only: test
  labels can be anything and training comes out the same.
* The CF alignment (MAKR's co-interaction pairs) and GBR (its training windows, the locators'
  statistics) read train-period behaviors only: rewriting every validation and test behavior
  leaves them unchanged.
* MAKR prompts hold no interaction data: the prompts sent for a catalog are identical under a
  different interaction log, and no user id appears in them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from reaseq.offline import synthetic
from reaseq.offline.datasets import load_dataset
from reaseq.offline.prepare import Prepared, prepare


def synthetic_data(folder: Path, shuffle_interactions: bool = False) -> Prepared:
    raw_dir = synthetic.generate(folder)
    raw = load_dataset(raw_dir)
    if shuffle_interactions:  # same catalog, another log: items reassigned across users
        inter = raw.interactions.copy()
        rng = np.random.default_rng(7)
        inter["item_id"] = inter["item_id"].to_numpy()[rng.permutation(len(inter))]
        inter = inter.drop_duplicates(["user_id", "item_id"])
        raw = replace(raw, interactions=inter.reset_index(drop=True))
    return prepare(raw)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return synthetic_data(tmp_path_factory.mktemp("leakage") / "raw")


def held_out_positions(data: Prepared) -> np.ndarray:
    """Behavior positions outside every user's train period."""
    lengths = np.diff(data.beh_offsets)
    users = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(users)) - data.beh_offsets[users]
    train = data.train_period_behaviors()
    cut = np.bincount(train["user_row"].to_numpy(), minlength=len(lengths))
    return np.flatnonzero(position >= cut[users])


def with_rewritten_held_out(data: Prepared) -> Prepared:
    """The same data with every validation / test behavior replaced by another item at another
    time (the samples, and so the train period, unchanged)."""
    held = held_out_positions(data)
    items = data.beh_items.copy()
    items[held] = (items[held] + 1 + np.arange(len(held)) % 7) % data.n_items
    times = data.beh_times.copy()
    times[held] = times[held] + 86_400.0 * (30 + np.arange(len(held)) % 90)
    return replace(data, beh_items=items, beh_times=times, _gap_buckets=None)


# -- (a) validation only ---------------------------------------------------------------------
def test_early_stopping_and_calibration_never_read_test_labels(data: Prepared) -> None:
    from reaseq.offline.train import TrainConfig, train_ranker

    cfg = TrainConfig(features="id", epochs=3, patience=1, threads=1, seed=3)
    cfg.ranker.max_behaviors = 20
    flipped = data.samples.copy()
    test = flipped["split"] == "test"
    flipped.loc[test, "label"] = 1.0 - flipped.loc[test, "label"]
    runs = [
        train_ranker(d, None, replace(cfg, ranker=replace(cfg.ranker)))
        for d in (data, replace(data, samples=flipped))
    ]
    a, b = runs
    assert a.history == b.history and a.best_epoch == b.best_epoch
    assert a.calibration == b.calibration
    assert a.metrics["val"] == b.metrics["val"]
    np.testing.assert_array_equal(a.predictions["test"], b.predictions["test"])
    # the flip did reach the test metrics: the guard is not vacuous
    assert a.metrics["test"]["auc"] == pytest.approx(1 - b.metrics["test"]["auc"])


def test_choosing_among_alternatives_reads_validation_gauc_only() -> None:
    from reaseq.offline.experiment_report import best_by_validation

    def summary(val: float, test: float) -> dict:
        stat = {"mean": val, "std": 0.0, "values": [val]}
        return {"runs": 1, "val": {"gauc": stat}, "test": {"gauc": stat | {"mean": test}}}

    variants = {
        "full": summary(0.70, 0.90),
        "full-din": summary(0.72, 0.60),
        "id": summary(0.9, 0.9),
    }
    assert best_by_validation(variants, ("full", "full-din")) == "full-din"


# -- (b) train-period behaviors only -----------------------------------------------------------
def test_cf_pairs_use_train_period_behaviors_only(data: Prepared) -> None:
    from reaseq.offline.makr.encode import cointeraction_pairs

    changed = with_rewritten_held_out(data)

    def whole_log_pairs(d: Prepared) -> np.ndarray:  # what a leaking version would count
        users = np.repeat(np.arange(len(d.user_ids)), np.diff(d.beh_offsets))
        same = users[1:] == users[:-1]
        return np.stack([d.beh_items[:-1][same], d.beh_items[1:][same]], axis=1)

    assert not np.array_equal(whole_log_pairs(data), whole_log_pairs(changed))
    for window in (1, 3):
        np.testing.assert_array_equal(
            cointeraction_pairs(data, window), cointeraction_pairs(changed, window)
        )


def test_gbr_training_data_and_locators_use_train_period_behaviors_only(data: Prepared) -> None:
    from reaseq.offline.experiment_report import train_counts
    from reaseq.offline.gbr.learned_locator import train_locator
    from reaseq.offline.gbr.locate import LocateConfig, cooccurrence, gap_thresholds, gap_votes
    from reaseq.offline.gbr.train import train_chunks

    changed = with_rewritten_held_out(data)
    users = np.arange(len(data.user_ids))
    a, b = train_chunks(data, users, 24), train_chunks(changed, users, 24)
    for name in ("rows", "gaps", "valid", "users", "starts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (cooccurrence(data, 3) != cooccurrence(changed, 3)).nnz == 0
    cfg = LocateConfig()
    np.testing.assert_array_equal(gap_thresholds(data, cfg), gap_thresholds(changed, cfg))
    train_positions = np.setdiff1d(np.arange(len(data.beh_items)), held_out_positions(data))
    np.testing.assert_array_equal(
        gap_votes(data, cfg).votes[train_positions], gap_votes(changed, cfg).votes[train_positions]
    )
    reps = np.random.default_rng(0).normal(size=(data.n_items, 8)).astype(np.float32)
    model_a, _ = train_locator(data, reps, 24, 0.1, 0, 3)
    model_b, _ = train_locator(changed, reps, 24, 0.1, 0, 3)
    np.testing.assert_array_equal(model_a[-1].coef_, model_b[-1].coef_)
    for x, y in zip(train_counts(data), train_counts(changed), strict=True):
        np.testing.assert_array_equal(x, y)  # the experiment's sparsity buckets


# -- (c) MAKR prompts ----------------------------------------------------------------------------
class RecordingLLM:
    """Records every prompt and answers each field with a fixed phrase. It stands in for the LLM
    because the property tested is what the job *sends*; a model's answer is itself a function
    of the prompt it was sent."""

    name = "recorder"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def complete(self, prompt: str, sampling):
        from reaseq.offline.makr.llm import Completion

        self.prompts.append(prompt)
        label = prompt.rsplit("\n", 1)[-1].split(":", 1)[0].lower()
        answer = {"kind": "kitchen tool", "brand": "unknown", "reasoning": "It is a tool."}
        return Completion(f" {answer.get(label, 'general use')}", 1, 1)


def makr_prompts(data: Prepared, work: Path) -> list[str]:
    from reaseq.offline.makr.agents import Agents
    from reaseq.offline.makr.job import MakrConfig, MakrRun
    from reaseq.offline.makr.llm import LLMConfig

    recorder = RecordingLLM()

    class RecordedRun(MakrRun):
        def agents(self) -> Agents:
            return Agents(recorder)

    # one item at a time: the prompts are compared in the order they were sent
    llm = LLMConfig(backend="openai", model="recorder", concurrency=1)
    cfg = MakrConfig(llm=llm, limit=12)
    cfg.shipped_dir = work / "no-shipped-knowledge"
    run = RecordedRun(data.items, work, cfg, dataset=data.name)
    try:
        report = run.run()
    finally:
        run.cache.close()
    assert report.generated == 12
    return recorder.prompts


def test_makr_prompts_hold_no_interaction_data(data: Prepared, tmp_path: Path) -> None:
    other = synthetic_data(tmp_path / "other-raw", shuffle_interactions=True)
    assert not np.array_equal(other.beh_items, data.beh_items)  # another log, same catalog
    assert other.items.equals(data.items)
    prompts = makr_prompts(data, tmp_path / "a")
    assert prompts == makr_prompts(other, tmp_path / "b")
    user_ids = set(data.user_ids.astype(str))
    words = set(re.findall(r"\w+", "\n".join(prompts)))
    assert not words & user_ids, "a user id reached a MAKR prompt"
    first = data.items.iloc[0]
    assert any(first["title"] in p for p in prompts)  # the item's own text is what it reads
