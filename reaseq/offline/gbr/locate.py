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


@dataclass
class LocateConfig:
    rules: tuple[str, ...] = RULES
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
        if self.max_slots < 0 or self.window < 1 or self.min_votes < 1:
            raise ValueError("max_slots >= 0, window >= 1 and min_votes >= 1 are required")


@dataclass
class GapVotes:
    """Per behavior position t (CSR like `Prepared.beh_items`): the rules that fire for the gap
    *before* it (between t-1 and t of the same user). A user's first behavior has no gap."""

    fired: dict[str, np.ndarray]  # rule -> bool [T]
    votes: np.ndarray  # int8 [T]
    has_gap: np.ndarray  # bool [T]: not a user's first behavior


def train_cutoffs(data: Prepared) -> np.ndarray:
    """Per user: how many of their first behaviors are in the train period."""
    users = data.train_period_behaviors()["user_row"].to_numpy()
    return np.bincount(users, minlength=len(data.user_ids)).astype(np.int64)


def _user_of(data: Prepared) -> np.ndarray:
    return np.repeat(np.arange(len(data.user_ids)), np.diff(data.beh_offsets))


def _gap_rule(data: Prepared, cfg: LocateConfig, has_gap: np.ndarray) -> np.ndarray:
    if not data.has_timestamps or np.isnan(data.beh_times).all():
        return np.zeros(len(data.beh_items), dtype=bool)
    users = _user_of(data)
    gaps = np.full(len(data.beh_items), np.nan)
    gaps[1:] = np.diff(data.beh_times)
    gaps[~has_gap] = np.nan
    position = np.arange(len(users)) - data.beh_offsets[users]
    in_train = position < train_cutoffs(data)[users]
    frame = pd.DataFrame({"user": users, "gap": np.where(in_train, gaps, np.nan)})
    per_user = frame.groupby("user")["gap"]
    q = per_user.quantile(cfg.gap_quantile).reindex(range(len(data.user_ids)))
    med = per_user.median().reindex(range(len(data.user_ids)))
    n = per_user.count().reindex(range(len(data.user_ids))).fillna(0)
    train_gaps = frame["gap"].dropna()
    q_all, med_all = (
        (float(train_gaps.quantile(cfg.gap_quantile)), float(train_gaps.median()))
        if len(train_gaps)
        else (np.inf, np.inf)
    )
    few = n.to_numpy() < cfg.min_user_gaps
    q_user = np.where(few, q_all, q.to_numpy())
    med_user = np.where(few, med_all, med.to_numpy())
    threshold = np.maximum(q_user, cfg.gap_factor * med_user)[users]
    # a zero median (same-day buys) must not make every non-zero gap "long": at least one day
    threshold = np.maximum(threshold, 86400.0)
    return has_gap & (np.nan_to_num(gaps, nan=-1.0) > threshold)


def _category_rule(data: Prepared, has_gap: np.ndarray) -> np.ndarray:
    codes = pd.factorize(data.items["category"].fillna("").astype(str))[0]
    cat = codes[data.beh_items]
    out = np.zeros(len(cat), dtype=bool)
    out[1:] = cat[1:] != cat[:-1]
    return out & has_gap


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


def _cf_rule(data: Prepared, cfg: LocateConfig, has_gap: np.ndarray) -> np.ndarray:
    cooc = cooccurrence(data, cfg.cf_window)
    prev = np.empty_like(data.beh_items)
    prev[1:], prev[0] = data.beh_items[:-1], data.beh_items[0]
    counts = np.asarray(cooc[prev, data.beh_items]).ravel()
    users = _user_of(data)
    position = np.arange(len(users)) - data.beh_offsets[users]
    in_train = position < train_cutoffs(data)[users]
    own = (in_train & has_gap).astype(np.float32)  # this user's own adjacent pair
    return has_gap & (counts - own <= 0)


def gap_votes(data: Prepared, cfg: LocateConfig) -> GapVotes:
    users = _user_of(data)
    has_gap = np.arange(len(users)) > data.beh_offsets[users]
    builders = {
        "gap": lambda: _gap_rule(data, cfg, has_gap),
        "category": lambda: _category_rule(data, has_gap),
        "cf": lambda: _cf_rule(data, cfg, has_gap),
    }
    fired = {rule: builders[rule]() for rule in cfg.rules}
    votes = np.zeros(len(users), dtype=np.int8)
    for hits in fired.values():
        votes += hits
    return GapVotes(fired, votes, has_gap)


def slots_in_prefix(votes: np.ndarray, start: int, end: int, cfg: LocateConfig) -> np.ndarray:
    """Absolute behavior positions t in [start, end) whose preceding gap gets a slot, sorted."""
    lo = max(start + 1, end - cfg.window + 1)
    if cfg.max_slots == 0 or end - lo <= 0:
        return np.zeros(0, dtype=np.int64)
    span = votes[lo:end]
    candidates = np.flatnonzero(span >= cfg.min_votes)
    if len(candidates) > cfg.max_slots:  # most votes first, then most recent
        order = np.lexsort((-candidates, -span[candidates]))
        candidates = candidates[order[: cfg.max_slots]]
    return np.sort(candidates + lo).astype(np.int64)


def locate_report(data: Prepared, votes: GapVotes, cfg: LocateConfig) -> dict:
    """Statistics over each user's whole log as served (the full-log prefix)."""
    per_user, by_rule = [], dict.fromkeys(votes.fired, 0)
    for u in range(len(data.user_ids)):
        start, end = int(data.beh_offsets[u]), int(data.beh_offsets[u + 1])
        slots = slots_in_prefix(votes.votes, start, end, cfg)
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
