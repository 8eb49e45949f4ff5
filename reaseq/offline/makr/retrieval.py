"""Representation metrics (DESIGN §3.2): Macro Recall@K and SM-HR@K.

* Macro Recall@K: an item's K nearest neighbours against the items it was co-interacted with in
  the HELD-OUT part of the log (pairs that reach into validation or test; the projector only saw
  train-period pairs), recall averaged within each category, then over categories.
* SM-HR@K: from an item's degraded text (its title with words dropped, fixed seed) retrieve the
  exact item; hit if it ranks in the top K of the whole catalog.

Each representation is a pair (catalog matrix, query function from texts to the same space).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reaseq.offline.prepare import Prepared

QueryFn = Callable[[np.ndarray], np.ndarray]  # MiniLM embeddings of queries -> rep space


@dataclass
class Representation:
    name: str
    catalog: np.ndarray  # [N, d]
    query: QueryFn


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def heldout_pairs(data: Prepared, window: int = 1) -> dict[int, set[int]]:
    """item row -> items co-interacted with it within `window` positions where the later one is
    past the user's train period (both directions)."""
    lengths = np.diff(data.beh_offsets)
    train = data.train_period_behaviors().groupby("user_row").size()
    cutoff = np.zeros(len(lengths), np.int64)
    cutoff[train.index.to_numpy()] = train.to_numpy()
    truth: dict[int, set[int]] = defaultdict(set)
    for user in np.flatnonzero(lengths > cutoff):
        seq = data.beh_items[data.beh_offsets[user] : data.beh_offsets[user + 1]]
        for pos in range(max(1, cutoff[user]), len(seq)):
            for lag in range(1, window + 1):
                if pos - lag >= 0 and seq[pos] != seq[pos - lag]:
                    a, b = int(seq[pos]), int(seq[pos - lag])
                    truth[a].add(b)
                    truth[b].add(a)
    return dict(truth)


def neighbours(catalog: np.ndarray, rows: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Top-k cosine neighbours of `rows` (themselves excluded): [len(rows), k]."""
    unit = _unit(catalog)
    out = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        sims = unit[part] @ unit.T
        sims[np.arange(len(part)), part] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def macro_recall(
    catalog: np.ndarray, truth: dict[int, set[int]], categories: np.ndarray, ks: tuple[int, ...]
) -> dict[str, float]:
    rows = np.array(sorted(truth), dtype=np.int64)
    top = neighbours(catalog, rows, max(ks))
    out = {}
    for k in ks:
        per_cat: dict[str, list[float]] = defaultdict(list)
        for row, nbrs in zip(rows, top[:, :k], strict=True):
            gt = truth[int(row)]
            per_cat[str(categories[row])].append(len(gt.intersection(nbrs.tolist())) / len(gt))
        out[f"macro_recall@{k}"] = round(float(np.mean([np.mean(v) for v in per_cat.values()])), 4)
    return out


def sm_hr(catalog: np.ndarray, queries: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """queries[i] should retrieve catalog row i."""
    unit, q = _unit(catalog), _unit(queries)
    ranks = []
    for start in range(0, len(q), 1024):
        sims = q[start : start + 1024] @ unit.T
        own = sims[np.arange(len(sims)), np.arange(start, start + len(sims))]
        ranks.append((sims > own[:, None]).sum(axis=1))
    rank = np.concatenate(ranks)
    return {f"sm_hr@{k}": round(float((rank < k).mean()), 4) for k in ks}


def degraded_titles(titles: list[str], drop: float = 0.3, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for title in titles:
        words = title.split()
        kept = [w for w in words if rng.random() >= drop] or words[:1]
        out.append(" ".join(kept))
    return out


def pca_fit(x: np.ndarray, dim: int) -> QueryFn:
    """The text representation's PCA as a function, so queries land in the same space."""
    mean = x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[: min(dim, vt.shape[0])].T
    return lambda q: (q - mean) @ basis


def relation_neighbour_recall(
    catalog: np.ndarray, partners: dict[int, set[int]], k: int = 10
) -> float:
    """Share of an item's real partners (e.g. Amazon also_viewed) among its k neighbours."""
    rows = np.array(sorted(partners), dtype=np.int64)
    if not len(rows):
        return float("nan")
    top = neighbours(catalog, rows, k)
    hits = [
        len(partners[int(r)].intersection(n.tolist())) / len(partners[int(r)])
        for r, n in zip(rows, top, strict=True)
    ]
    return round(float(np.mean(hits)), 4)
