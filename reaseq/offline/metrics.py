"""Ranking metrics: AUC, user-weighted GAUC (DIN paper) and LogLoss."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC per user weighted by the user's number of samples; one-class users are skipped.

    Vectorised with the rank-sum (Mann-Whitney) form of AUC, ties averaged: one groupby instead
    of a scikit-learn call per user (which took minutes on 8k users)."""
    frame = pd.DataFrame({"u": users, "y": np.asarray(labels, dtype=np.float64), "s": scores})
    frame["rank"] = frame.groupby("u", sort=False)["s"].rank(method="average")
    frame["pos_rank"] = frame["rank"] * frame["y"]
    per_user = frame.groupby("u", sort=False).agg(
        n=("y", "size"), pos=("y", "sum"), rank_sum=("pos_rank", "sum")
    )
    neg = per_user["n"] - per_user["pos"]
    valid = (per_user["pos"] > 0) & (neg > 0)
    if not valid.any():
        return float("nan")
    pos, n, rank_sum = per_user["pos"][valid], per_user["n"][valid], per_user["rank_sum"][valid]
    auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg[valid])
    return float((auc * n).sum() / n.sum())


def ctr_metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    scores = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "gauc": float(gauc(users, labels, scores)),
        "logloss": float(log_loss(labels, scores, labels=[0, 1])),
        "n": len(labels),
    }
