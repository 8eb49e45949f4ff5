"""Baselines are scored on the test samples and see the signal the synthetic data carries."""

import numpy as np

from reaseq.offline.baselines import all_baselines, text_similarity
from reaseq.offline.pipeline import load_prepared, load_text_embeddings


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
