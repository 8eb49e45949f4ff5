"""Ranking metrics: AUC, user-weighted GAUC (DIN paper) and LogLoss."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC per user weighted by the user's number of samples; one-class users are skipped."""
    frame = pd.DataFrame({"u": users, "y": labels, "s": scores})
    total, weight = 0.0, 0
    for _, group in frame.groupby("u", sort=False):
        y = group["y"].to_numpy()
        if y.min() == y.max():
            continue
        total += roc_auc_score(y, group["s"].to_numpy()) * len(group)
        weight += len(group)
    return total / weight if weight else float("nan")


def ctr_metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    scores = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "gauc": float(gauc(users, labels, scores)),
        "logloss": float(log_loss(labels, scores, labels=[0, 1])),
        "n": len(labels),
    }
