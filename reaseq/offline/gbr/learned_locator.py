"""A learned [FILL] locator (the paper's open question 1), beside the heuristics of `locate.py`.

It is trained on artificially removed behaviors: in GBR-train users' train-period logs one interior
behavior is removed, and the gap that removal leaves is a positive example; the log's real gaps are
the negatives. Features of a gap between items a and b: cosine of their representations, other
users' co-occurrence of the pair, a category change, the gap bucket, both items' popularity. The
model is a logistic regression; its probability is the gap's score, and the slot rule is the
heuristics' rule with that score in place of the vote count.

`locator_recovery` measures any locator the same way: hide one interior behavior of each
GBR-validation user, score the window's gaps, and report how often the hole ranks first (HR@1)
or in the top 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from reaseq.core.contract import N_GAP_BUCKETS, gap_buckets
from reaseq.offline.gbr.locate import GapVotes, PairRules, cooccurrence, train_cutoffs
from reaseq.offline.gbr.train import split_users
from reaseq.offline.prepare import Prepared


class GapFeatures:
    """What the classifier reads about a pair of one user's behaviors (positions a < b)."""

    def __init__(self, data: Prepared, reps: np.ndarray, window: int) -> None:
        reps = np.asarray(reps, np.float32)
        self.data, self.window = data, window
        self.unit_reps = reps / np.maximum(np.linalg.norm(reps, axis=1, keepdims=True), 1e-12)
        train = data.train_period_behaviors()
        counts = np.bincount(train["item_row"].to_numpy(), minlength=data.n_items)
        self.log_popularity = np.log1p(counts).astype(np.float32)
        self.categories = pd.factorize(data.items["category"].fillna("").astype(str))[0]
        self.cooc = cooccurrence(data, window)
        users = np.repeat(np.arange(len(data.user_ids)), np.diff(data.beh_offsets))
        position = np.arange(len(users)) - data.beh_offsets[users]
        self.in_train = position < train_cutoffs(data)[users]

    def __call__(self, a: np.ndarray, b: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        """[n, F]; other users' co-occurrence leaves out the user's own (as the cf rule does)."""
        items_a, items_b = self.data.beh_items[a], self.data.beh_items[b]
        cos = np.einsum("ij,ij->i", self.unit_reps[items_a], self.unit_reps[items_b])
        own = self.in_train[a] & self.in_train[b] & (b - a <= self.window)
        others = np.asarray(self.cooc[items_a, items_b]).ravel() - own
        one_hot = np.eye(N_GAP_BUCKETS, dtype=np.float32)[buckets]
        return np.column_stack(
            [
                cos,
                np.log1p(np.maximum(others, 0)),
                (self.categories[items_a] != self.categories[items_b]).astype(np.float32),
                self.log_popularity[items_a],
                self.log_popularity[items_b],
                one_hot,
            ]
        ).astype(np.float32)


def _holes(
    data: Prepared, users: np.ndarray, max_len: int, rng: np.random.Generator
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Per user with >= 3 train-period behaviors in the window: (index in the window of the
    behavior right after the hole, window positions without the hidden one, their gap buckets
    with the hole applied)."""
    cut = train_cutoffs(data)
    buckets = data.gap_buckets()
    out = []
    for u in users:
        start, n = int(data.beh_offsets[u]), int(cut[u])
        lo = start + max(0, n - max_len)
        if start + n - lo < 3:
            continue
        hidden = int(rng.integers(lo + 1, start + n - 1))
        positions = np.concatenate([np.arange(lo, hidden), np.arange(hidden + 1, start + n)])
        gaps = buckets[positions].astype(np.int64)
        at = hidden - lo  # positions[at] is the behavior after the hole
        times = data.beh_times[[hidden - 1, hidden + 1]]
        if not np.isnan(times).all():
            gaps[at] = gap_buckets(times)[1]
        out.append((at, positions, gaps))
    return out


def train_locator(
    data: Prepared, reps: np.ndarray, max_len: int, val_fraction: float, seed: int, window: int
):
    """(fitted scaler + logistic regression, its features) from GBR-train users' holes."""
    rng = np.random.default_rng(seed + 11)
    features = GapFeatures(data, reps, window)
    train_users = np.flatnonzero(~split_users(len(data.user_ids), val_fraction, seed))
    xs, ys = [], []
    for at, positions, gaps in _holes(data, train_users, max_len, rng):
        xs.append(features(positions[:-1], positions[1:], gaps[1:]))
        y = np.zeros(len(positions) - 1, np.int64)
        y[at - 1] = 1  # the gap before positions[at] is the hole
        ys.append(y)
    model = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000)
    )
    model.fit(np.concatenate(xs), np.concatenate(ys))
    return model, features


def learned_scores(data: Prepared, model, features: GapFeatures) -> np.ndarray:
    """float32 [T]: the probability that the gap before each behavior is a hole (0 at a user's
    first behavior)."""
    users = np.repeat(np.arange(len(data.user_ids)), np.diff(data.beh_offsets))
    t = np.flatnonzero(np.arange(len(users)) > data.beh_offsets[users])
    scores = np.zeros(len(users), np.float32)
    scores[t] = model.predict_proba(features(t - 1, t, data.gap_buckets()[t]))[:, 1]
    return scores


def locator_recovery(
    data: Prepared,
    max_len: int,
    val_fraction: float,
    seed: int,
    model,
    features: GapFeatures,
    rules: PairRules,
) -> dict:
    """HR@1 / HR@3 of the hole among each validation window's gaps, for the learned scores and
    for the heuristic vote counts (ties to the most recent gap, as `slots_in_prefix` breaks them).
    Chance is 1 / (gaps in the window)."""
    rng = np.random.default_rng(seed + 13)
    val_users = np.flatnonzero(split_users(len(data.user_ids), val_fraction, seed))
    ranks: dict[str, list[int]] = {"learned": [], "heuristic": [], "chance": []}
    n_gaps = []
    for at, positions, gaps in _holes(data, val_users, max_len, rng):
        a, b = positions[:-1], positions[1:]
        learned = model.predict_proba(features(a, b, gaps[1:]))[:, 1]
        votes = sum(hits.astype(np.float64) for hits in rules(a, b).values())
        n_gaps.append(len(a))
        for name, score in (("learned", learned), ("heuristic", votes)):
            tie_break = score + np.arange(len(score)) * 1e-9  # most recent first
            ranks[name].append(int((tie_break > tie_break[at - 1]).sum()))
    out: dict = {"cases": len(n_gaps), "gaps_per_window_mean": float(np.mean(n_gaps or [0]))}
    for name in ("learned", "heuristic"):
        r = np.asarray(ranks[name])
        out[name] = {"hr@1": float((r < 1).mean()), "hr@3": float((r < 3).mean())}
    g = np.asarray(n_gaps, np.float64)
    out["chance"] = {"hr@1": float((1 / g).mean()), "hr@3": float(np.minimum(3 / g, 1).mean())}
    return out


def learned_votes(data: Prepared, model, features: GapFeatures, threshold: float) -> GapVotes:
    """The learned locator in the heuristics' place: P(hole) as the gap's score."""
    scores = learned_scores(data, model, features)
    users = np.repeat(np.arange(len(data.user_ids)), np.diff(data.beh_offsets))
    has_gap = np.arange(len(users)) > data.beh_offsets[users]
    return GapVotes({"learned": scores >= threshold}, scores, has_gap, threshold)
