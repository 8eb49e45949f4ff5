"""Non-learned baselines scored on the same test samples as the ranker (DESIGN §3.4).

On sparse 5-core shop data an ID-only model can lose to these; a ranker that does not clear them
is not done. All of them count train-period interactions only, from the interaction log: each
user's first item counts too (it is an interaction, though not a sample); validation and test
interactions never do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from reaseq.offline.metrics import ctr_metrics
from reaseq.offline.prepare import Prepared

LAST_K = 10  # behaviors the co-occurrence and text baselines look at
COOC_WINDOW = 5  # train-period interactions this close in a user's sequence count as co-occurring


def _score(test: pd.DataFrame, score: np.ndarray) -> dict[str, float]:
    score = np.asarray(score, dtype=np.float64)
    lo, hi = score.min(), score.max()
    squashed = (score - lo + 1e-3) / (hi - lo + 2e-3)  # in (0, 1): LogLoss defined, order kept
    return ctr_metrics(test["user_row"].to_numpy(), test["label"].to_numpy(), squashed)


def popularity_counts(data: Prepared) -> np.ndarray:
    """[N] train-period interactions per item, counted from the log (each user's first item
    included: it is an interaction although not a sample), never from validation or test."""
    return np.bincount(data.train_period_behaviors()["item_row"], minlength=data.n_items)


def cooccurrence_matrix(data: Prepared) -> sparse.csr_matrix:
    """[N, N] symmetric counts of train-period item pairs at most COOC_WINDOW apart in a user's
    log (the first item included)."""
    log = data.train_period_behaviors()
    users, items = log["user_row"].to_numpy(), log["item_row"].to_numpy()
    rows, cols = [], []
    for lag in range(1, COOC_WINDOW + 1):
        same = users[lag:] == users[:-lag]
        rows.append(items[lag:][same])
        cols.append(items[:-lag][same])
    r, c = np.concatenate(rows), np.concatenate(cols)
    n = data.n_items
    return sparse.coo_matrix(
        (np.ones(2 * len(r)), (np.r_[r, c], np.r_[c, r])), shape=(n, n)
    ).tocsr()


def popularity(data: Prepared, test: pd.DataFrame) -> dict[str, float]:
    """Score = the candidate's train-period interaction count."""
    return _score(test, popularity_counts(data)[test["item_row"].to_numpy()])


def cooccurrence(data: Prepared, test: pd.DataFrame) -> dict[str, float]:
    """Score = how often the candidate co-occurred (within a window, in train) with the user's
    last behaviors, normalised by the candidate's popularity."""
    cooc = cooccurrence_matrix(data)
    pop = popularity_counts(data) + 1.0
    hist = data.histories(test, LAST_K, pad=-1)
    cand = test["item_row"].to_numpy()
    score = np.zeros(len(test))
    for j in range(LAST_K):
        valid = hist[:, j] >= 0
        score[valid] += np.asarray(cooc[cand[valid], hist[valid, j]]).ravel()
    return _score(test, score / np.sqrt(pop[cand]))


def text_similarity(data: Prepared, test: pd.DataFrame, embeddings: np.ndarray) -> dict[str, float]:
    """Score = mean cosine of the candidate's text embedding to the last behaviors'."""
    emb = embeddings / (np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-12)
    hist = data.histories(test, LAST_K, pad=-1)
    valid = hist >= 0
    sims = np.einsum("sd,skd->sk", emb[test["item_row"].to_numpy()], emb[np.maximum(hist, 0)])
    score = (sims * valid).sum(1) / np.maximum(valid.sum(1), 1)
    return _score(test, score)


def all_baselines(data: Prepared, text_embeddings: np.ndarray | None) -> dict[str, dict]:
    test = data.samples[data.samples["split"] == "test"]
    out = {"popularity": popularity(data, test), "co-occurrence": cooccurrence(data, test)}
    if text_embeddings is not None:
        out["text-similarity"] = text_similarity(data, test, text_embeddings)
    return out
