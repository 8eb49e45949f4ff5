"""The synthetic dataset loads as generic data, is deterministic, and carries learnable signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reaseq.offline.datasets import load_dataset
from reaseq.offline.synthetic import VOCABULARY, generate


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Interactions with each item's category, in the loaded (time) order."""
    out = generate(tmp_path_factory.mktemp("synthetic"), seed=3)
    ds = load_dataset(out)
    categories = ds.items.set_index("item_id")["category"]
    return ds.interactions.assign(category=ds.interactions["item_id"].map(categories))


def test_loads_as_generic_with_timestamps(tmp_path: Path) -> None:
    out = generate(tmp_path / "new" / "dir", n_users=30, n_items=40, n_categories=4)
    assert out == tmp_path / "new" / "dir"
    assert sorted(p.name for p in out.iterdir()) == ["interactions.csv", "items.csv"]
    ds = load_dataset(out)
    assert ds.report.format == "generic"
    assert ds.has_timestamps and not ds.explicit_labels
    assert ds.report.malformed == {}
    assert ds.interactions["user_id"].nunique() == 30
    assert len(ds.items) == 40 and ds.items["category"].nunique() == 4
    assert list(pd.read_csv(out / "items.csv").columns) == [
        "item_id",
        "title",
        "description",
        "brand",
        "category",
    ]
    for _, row in ds.items.iterrows():  # titles use the category's own words
        words = VOCABULARY[row["category"]]
        assert any(w in row["title"].lower() for w in words)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_users=40, seed=7)
    b = generate(tmp_path / "b", n_users=40, seed=7)
    c = generate(tmp_path / "c", n_users=40, seed=8)
    for name in ("interactions.csv", "items.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "interactions.csv").read_bytes() != (c / "interactions.csv").read_bytes()


def test_timestamps_increase_with_varied_gaps(joined: pd.DataFrame) -> None:
    gaps = joined.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps > 0).all()
    assert (gaps < 3600).mean() > 0.3  # within-session clicks
    assert (gaps > 30 * 86_400).mean() > 0.03  # some long breaks
    lengths = joined.groupby("user_id").size()
    assert lengths.min() >= 3 and 9 <= lengths.mean() <= 15


def test_users_concentrate_on_preferred_categories(joined: pd.DataFrame) -> None:
    def top_two_share(categories: pd.Series) -> float:
        return float(categories.value_counts().iloc[:2].sum() / len(categories))

    share = joined.groupby("user_id")["category"].apply(top_two_share)
    assert share.mean() > 0.8
    assert (share > 0.6).mean() > 0.9


def test_history_predicts_next_category(joined: pd.DataFrame) -> None:
    """A trivial "most frequent past category" rule beats chance by far: there is signal."""
    hits = []
    for _, group in joined.groupby("user_id"):
        history, last = group["category"].iloc[:-1], group["category"].iloc[-1]
        hits.append(history.value_counts().index[0] == last)
    n_categories = joined["category"].nunique()
    assert np.mean(hits) > 3.0 / n_categories


def test_popularity_is_skewed(joined: pd.DataFrame) -> None:
    counts = joined["item_id"].value_counts()
    top = counts.iloc[: max(1, len(counts) // 10)].sum() / counts.sum()
    assert top > 0.2  # the top 10% of items take well over 10% of the clicks


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_categories"):
        generate(tmp_path, n_categories=len(VOCABULARY) + 1)
    with pytest.raises(ValueError, match="n_items >= n_categories"):
        generate(tmp_path, n_items=2, n_categories=3)
