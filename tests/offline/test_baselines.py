"""Baselines are scored on the test samples, see the signal the synthetic data carries, and
count every train-period interaction of the log (DESIGN §3.4)."""

import numpy as np
import pandas as pd
import pytest

from reaseq.offline.baselines import (
    COOC_WINDOW,
    all_baselines,
    cooccurrence_matrix,
    popularity_counts,
    text_similarity,
)
from reaseq.offline.datasets import RawDataset, load_dataset
from reaseq.offline.pipeline import load_prepared, load_text_embeddings
from reaseq.offline.prepare import Prepared, prepare
from reaseq.offline.synthetic import generate


def test_report_has_every_baseline(pipeline_run) -> None:
    baselines = pipeline_run.report["baselines"]
    assert set(baselines) == {"popularity", "co-occurrence", "text-similarity"}
    n_test = pipeline_run.report["data"]["samples"]["test"]
    assert all(b["n"] == n_test for b in baselines.values())


def test_text_similarity_finds_category_preference(pipeline_run) -> None:
    data = load_prepared(pipeline_run.work_dir)
    test = data.samples[data.samples["split"] == "test"]
    emb = load_text_embeddings(pipeline_run.work_dir)
    assert text_similarity(data, test, emb)["auc"] > 0.6  # users stick to their categories
    shuffled = np.random.default_rng(0).permutation(emb)
    assert all_baselines(data, shuffled)["text-similarity"]["auc"] < 0.6


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[RawDataset, Prepared]:
    raw = load_dataset(generate(tmp_path_factory.mktemp("syn"), n_users=80, n_items=60))
    return raw, prepare(raw)


def train_period_log(raw: RawDataset) -> pd.DataFrame:
    """Independently of prepare: each user's log in time order minus its last two (val, test)."""
    log = raw.interactions.sort_values(["user_id", "timestamp", "order"], kind="stable")
    from_end = log.groupby("user_id").cumcount(ascending=False)
    return log[from_end >= 2]


def test_popularity_counts_every_train_period_interaction(synthetic_data) -> None:
    raw, data = synthetic_data
    log = train_period_log(raw)
    rows = dict(zip(data.items["item_id"], data.items["item_row"], strict=True))
    expected = np.bincount(log["item_id"].map(rows), minlength=data.n_items)
    # each user's first item counts (before the fix it was missed: counting started at samples)
    np.testing.assert_array_equal(popularity_counts(data), expected)


def test_cooccurrence_counts_the_first_item_and_no_held_out_one(synthetic_data) -> None:
    raw, data = synthetic_data
    rows = dict(zip(data.items["item_id"], data.items["item_row"], strict=True))
    cooc = cooccurrence_matrix(data)
    log = raw.interactions.sort_values(["user_id", "timestamp", "order"], kind="stable")
    for _, user_log in list(log.groupby("user_id"))[:20]:
        items = user_log["item_id"].map(rows).to_numpy()
        first, second = items[0], items[1]
        if first != second:
            assert cooc[first, second] >= 1  # the first item pairs with the second
    # total pair count = pairs within the window inside each user's train-period log only
    expected = 0
    for _, user_log in train_period_log(raw).groupby("user_id"):
        n = len(user_log)
        expected += sum(max(n - lag, 0) for lag in range(1, COOC_WINDOW + 1))
    assert cooc.sum() == 2 * expected
