"""Where a user's log has gaps worth filling: the `[FILL]` locator heuristics (DESIGN §3.3).

Each gap between two consecutive behaviors gets votes from three rules:

* `gap`: the time between them is unusually long *for this user* — above the user's own
  `gap_quantile` and `gap_factor` × their median gap (users with few gaps use everyone's). Needs
  timestamps: Office and ML-100K have them, Scientific has order only, so the rule never fires
  there (the report says so).
* `category`: the two items' categories differ.
* `cf`: the two items are a collaborative-filtering discontinuity — no *other* user has them
  within `cf_window` positions of each other in the train period.

A prefix of the log (what one sample may see) gets at most `max_slots` slots, in gaps among its
last `window` behaviors, the gaps with most votes first, then the most recent. Votes use only the
train period (gap distribution, co-occurrence), so nothing from held-out interactions leaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from reaseq.offline.prepare import Prepared

RULES = ("gap", "category", "cf")
METHODS = ("heuristic", "learned")


@dataclass
class LocateConfig:
    method: str = "heuristic"  # heuristic: vote of the rules; learned: learned_locator.py
    rules: tuple[str, ...] = RULES
    learned_threshold: float = 0.5  # learned: P(hole) a gap needs for a slot
    min_votes: int = 2  # a gap is a candidate slot when at least this many rules fire
    gap_quantile: float = 0.8
    gap_factor: float = 3.0
    min_user_gaps: int = 4  # fewer own gaps than this: compare against everyone's distribution
    cf_window: int = 3
    max_slots: int = 2  # per prefix
    window: int = 20  # slots only among the prefix's last `window` behaviors

    def __post_init__(self) -> None:
        unknown = set(self.rules) - set(RULES)
        if unknown:
            raise ValueError(f"unknown locator rules {sorted(unknown)}; known: {', '.join(RULES)}")
        if self.method not in METHODS:
            raise ValueError(f"locator method must be one of {', '.join(METHODS)}")
        if self.max_slots < 0 or self.window < 1 or self.min_votes < 1:
            raise ValueError("max_slots >= 0, window >= 1 and min_votes >= 1 are required")


@dataclass
class GapVotes:
    """Per behavior position t (CSR like `Prepared.beh_items`): the rules that fire for the gap
    *before* it (between t-1 and t of the same user). A user's first behavior has no gap."""

    fired: dict[str, np.ndarray]  # rule -> bool [T]
    votes: np.ndarray  # [T] the gap's score: rules fired (heuristic) or P(hole) (learned)
    has_gap: np.ndarray  # bool [T]: not a user's first behavior
    threshold: float = 1.0  # a gap with votes >= threshold may get a slot


def train_cutoffs(data: Prepared) -> np.ndarray:
    """Per user: how many of their first behaviors are in the train period."""
    users = data.train_period_behaviors()["user_row"].to_numpy()
    return np.bincount(users, minlength=len(data.user_ids)).astype(np.int64)


def _user_of(data: Prepared) -> np.ndarray:
    return np.repeat(np.arange(len(data.user_ids)), np.diff(data.beh_offsets))


def _in_train(data: Prepared) -> np.ndarray:
    """bool [T]: the behavior is in its user's train period."""
    users = _user_of(data)
    position = np.arange(len(users)) - data.beh_offsets[users]
    return position < train_cutoffs(data)[users]


def gap_thresholds(data: Prepared, cfg: LocateConfig) -> np.ndarray:
    """Per user: seconds above which a gap is long *for them* (inf without timestamps)."""
    n_users = len(data.user_ids)
    if not data.has_timestamps or np.isnan(data.beh_times).all():
        return np.full(n_users, np.inf)
    users = _user_of(data)
    gaps = np.full(len(data.beh_items), np.nan)
    gaps[1:] = np.diff(data.beh_times)
    first = np.arange(len(users)) == data.beh_offsets[users]
    gaps[first | ~_in_train(data)] = np.nan  # train-period gaps only
    frame = pd.DataFrame({"user": users, "gap": gaps})
    per_user = frame.groupby("user")["gap"]
    q = per_user.quantile(cfg.gap_quantile).reindex(range(n_users)).to_numpy()
    med = per_user.median().reindex(range(n_users)).to_numpy()
    n = per_user.count().reindex(range(n_users)).fillna(0).to_numpy()
    train_gaps = frame["gap"].dropna()
    q_all, med_all = (
        (float(train_gaps.quantile(cfg.gap_quantile)), float(train_gaps.median()))
        if len(train_gaps)
        else (np.inf, np.inf)
    )
    few = n < cfg.min_user_gaps
    threshold = np.maximum(np.where(few, q_all, q), cfg.gap_factor * np.where(few, med_all, med))
    # a zero median (same-day buys) must not make every non-zero gap "long": at least one day
    return np.maximum(threshold, 86400.0)


def cooccurrence(data: Prepared, window: int) -> sp.csr_matrix:
    """Symmetric train-period co-occurrence counts of items within `window` positions."""
    train = data.train_period_behaviors()
    users, items = train["user_row"].to_numpy(), train["item_row"].to_numpy()
    rows, cols = [], []
    for lag in range(1, window + 1):
        same = users[lag:] == users[:-lag]
        rows.append(items[:-lag][same])
        cols.append(items[lag:][same])
    r, c = np.concatenate(rows), np.concatenate(cols)
    n = data.n_items
    m = sp.coo_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n, n)).tocsr()
    return (m + m.T).tocsr()


class PairRules:
    """The three rules for any pair of one user's behaviors (a before b, consecutive once the
    slot question is asked): real gaps and the holes of the locator evaluation alike."""

    def __init__(self, data: Prepared, cfg: LocateConfig) -> None:
        self.data, self.cfg = data, cfg
        self.users = _user_of(data)
        self.in_train = _in_train(data)
        self.thresholds = gap_thresholds(data, cfg) if "gap" in cfg.rules else None
        self.categories = pd.factorize(data.items["category"].fillna("").astype(str))[0]
        self.cooc = cooccurrence(data, cfg.cf_window) if "cf" in cfg.rules else None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        """Behavior positions a, b (same user, a < b) -> rule -> bool fired."""
        data, out = self.data, {}
        items_a, items_b = data.beh_items[a], data.beh_items[b]
        if self.thresholds is not None:
            gap = np.nan_to_num(data.beh_times[b] - data.beh_times[a], nan=-1.0)
            out["gap"] = gap > self.thresholds[self.users[b]]
        if "category" in self.cfg.rules:
            out["category"] = self.categories[items_a] != self.categories[items_b]
        if self.cooc is not None:
            counts = np.asarray(self.cooc[items_a, items_b]).ravel()
            # the user's own log counted the pair once if both are train-period and close
            own = self.in_train[a] & self.in_train[b] & (b - a <= self.cfg.cf_window)
            out["cf"] = counts - own <= 0
        return out


def gap_votes(data: Prepared, cfg: LocateConfig) -> GapVotes:
    users = _user_of(data)
    has_gap = np.arange(len(users)) > data.beh_offsets[users]
    t = np.flatnonzero(has_gap)
    fired_at = PairRules(data, cfg)(t - 1, t)
    fired = {}
    for rule in cfg.rules:
        hits = np.zeros(len(users), dtype=bool)
        hits[t] = fired_at[rule]
        fired[rule] = hits
    votes = np.zeros(len(users), dtype=np.int8)
    for hits in fired.values():
        votes += hits
    return GapVotes(fired, votes, has_gap, float(cfg.min_votes))


def slots_in_prefix(
    votes: np.ndarray, start: int, end: int, cfg: LocateConfig, threshold: float | None = None
) -> np.ndarray:
    """Absolute behavior positions t in [start, end) whose preceding gap gets a slot, sorted.
    `threshold` defaults to the heuristics' `min_votes`."""
    threshold = cfg.min_votes if threshold is None else threshold
    lo = max(start + 1, end - cfg.window + 1)
    if cfg.max_slots == 0 or end - lo <= 0:
        return np.zeros(0, dtype=np.int64)
    span = votes[lo:end]
    candidates = np.flatnonzero(span >= threshold)
    if len(candidates) > cfg.max_slots:  # most votes first, then most recent
        order = np.lexsort((-candidates, -span[candidates]))
        candidates = candidates[order[: cfg.max_slots]]
    return np.sort(candidates + lo).astype(np.int64)


def locate_report(data: Prepared, votes: GapVotes, cfg: LocateConfig) -> dict:
    """Statistics over each user's whole log as served (the full-log prefix)."""
    per_user, by_rule = [], dict.fromkeys(votes.fired, 0)
    for u in range(len(data.user_ids)):
        start, end = int(data.beh_offsets[u]), int(data.beh_offsets[u + 1])
        slots = slots_in_prefix(votes.votes, start, end, cfg, votes.threshold)
        per_user.append(len(slots))
        for rule, hits in votes.fired.items():
            by_rule[rule] += int(hits[slots].sum())
    counts = np.asarray(per_user)
    n_gaps = int(votes.has_gap.sum())
    return {
        "users": len(counts),
        "slots": int(counts.sum()),
        "slots_per_user_mean": round(float(counts.mean()), 3) if len(counts) else 0.0,
        "users_with_slots": round(float((counts > 0).mean()), 4) if len(counts) else 0.0,
        "slots_per_user_histogram": {
            str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True), strict=True)
        },
        "rule_fire_rate_over_all_gaps": {
            rule: round(float(hits.sum() / max(n_gaps, 1)), 4) for rule, hits in votes.fired.items()
        },
        "slots_where_rule_fired": by_rule,
        "timestamps": bool(data.has_timestamps and not np.isnan(data.beh_times).all()),
        "config": {k: v for k, v in cfg.__dict__.items()},
    }
