import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from reaseq.offline.metrics import (
    constant_logloss,
    ctr_metrics,
    expected_calibration_error,
    gauc,
    reliability,
)


def reference_gauc(users, labels, scores) -> float:
    total = weight = 0.0
    for u in np.unique(users):
        y, s = labels[users == u], scores[users == u]
        if y.min() != y.max():
            total += roc_auc_score(y, s) * len(y)
            weight += len(y)
    return total / weight


def test_gauc_matches_per_user_sklearn_with_ties_and_one_class_users() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, size=600)
    labels = rng.integers(0, 2, size=600).astype(float)
    scores = np.round(rng.random(600) + 0.3 * labels, 1)  # rounding makes ties
    labels[users == 3] = 1.0  # a one-class user is skipped
    assert gauc(users, labels, scores) == pytest.approx(reference_gauc(users, labels, scores))


def test_ctr_metrics_on_a_perfect_and_a_useless_ranking() -> None:
    users = np.array([0, 0, 1, 1])
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    perfect = ctr_metrics(users, labels, np.array([0.9, 0.1, 0.8, 0.2]))
    assert perfect["auc"] == perfect["gauc"] == 1.0
    flat = ctr_metrics(users, labels, np.full(4, 0.5))
    assert flat["gauc"] == 0.5 and flat["logloss"] == pytest.approx(np.log(2))


def test_auc_is_not_tied_by_the_logloss_clipping() -> None:
    """Tiny probabilities are clipped for LogLoss only; AUC/GAUC keep their order."""
    users = np.zeros(4, dtype=np.int64)
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    m = ctr_metrics(users, labels, np.array([1e-9, 1e-10, 1e-8, 1e-11]))
    assert m["auc"] == m["gauc"] == 1.0
    assert m["logloss"] == pytest.approx(-0.5 * np.log(1e-7), rel=1e-6)


def test_constant_predictor_logloss_uses_the_train_rate() -> None:
    assert constant_logloss(np.array([0.0, 1.0]), np.array([1.0, 0.0, 1.0])) == pytest.approx(
        np.log(2)
    )
    train, test = np.array([1.0, 1.0, 1.0, 0.0]), np.array([1.0, 0.0])
    assert constant_logloss(train, test) == pytest.approx(-(np.log(0.75) + np.log(0.25)) / 2)


def test_reliability_bins_and_ece() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(50_000)
    labels = (rng.random(50_000) < scores).astype(float)  # calibrated by construction
    table = reliability(labels, scores, n_bins=10)
    assert len(table) == 10 and sum(row["n"] for row in table) == 50_000
    assert expected_calibration_error(table) < 0.01
    overconfident = reliability(labels, np.where(scores > 0.5, 0.99, 0.01), n_bins=10)
    assert [row["lo"] for row in overconfident] == [0.0, 0.9]
    assert expected_calibration_error(overconfident) > 0.2
