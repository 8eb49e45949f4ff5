import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from reaseq.offline.metrics import ctr_metrics, gauc


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
