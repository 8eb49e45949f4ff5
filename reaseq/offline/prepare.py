"""Job `prepare`: a loaded dataset -> dense id maps, per-user behavior sequences and CTR samples.

Protocols (DESIGN §3.4, the DIN / BARS Amazon protocol so numbers sit beside published ones):

* implicit (Amazon, generic without labels): each user's log in time order (file order where the
  data has no timestamps); every interaction after the first is a positive whose behaviors are the
  user's earlier items, paired with one negative drawn uniformly (fixed seed) from the items that
  occur in the interaction log and that the user never touched, with the same behaviors. Last
  interaction -> test, second last -> validation, the rest -> train.
* explicit (MovieLens, generic with a label column): every rating is a sample with its own label;
  splits by global time (last 10% -> test, the 10% before -> validation); behaviors are the user's
  earlier items with label 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reaseq.core.contract import GAP_FIRST, GAP_UNKNOWN, gap_buckets
from reaseq.offline.datasets import RawDataset

SPLITS = ("train", "val", "test")
ITEMS_FILE = "items.parquet"
SAMPLES_FILE = "samples.parquet"
SEQUENCES_FILE = "sequences.npz"
SUMMARY_FILE = "prepare.json"


@dataclass
class PrepareConfig:
    seed: int = 0  # negative sampling
    val_fraction: float = 0.1  # explicit protocol only
    test_fraction: float = 0.1  # explicit protocol only


@dataclass
class Prepared:
    """A prepared dataset, as written to and read from `<dir>`."""

    name: str
    protocol: str  # "implicit-leave-last-out" | "explicit-global-time"
    has_timestamps: bool
    items: pd.DataFrame  # item_row, item_id, title, text, category (row = dense index)
    user_ids: np.ndarray  # [U] original ids; position = user row
    beh_offsets: np.ndarray  # int64 [U + 1], CSR over beh_items / beh_times
    beh_items: np.ndarray  # int32 [T] item rows, oldest first per user
    beh_times: np.ndarray  # float64 [T], NaN without timestamps
    samples: pd.DataFrame  # user_row, item_row, label, hist_end, split
    _gap_buckets: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def summary(self) -> dict:
        counts = self.samples.groupby("split")["label"].agg(["count", "mean"])
        return {
            "name": self.name,
            "protocol": self.protocol,
            "has_timestamps": self.has_timestamps,
            "n_users": len(self.user_ids),
            "n_items": self.n_items,
            "n_behaviors": len(self.beh_items),
            "samples": {s: int(counts.loc[s, "count"]) for s in counts.index},
            "positive_rate": {s: round(float(counts.loc[s, "mean"]), 4) for s in counts.index},
        }

    def save(self, out_dir: Path, extra: dict | None = None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.items.to_parquet(out_dir / ITEMS_FILE, index=False)
        self.samples.to_parquet(out_dir / SAMPLES_FILE, index=False)
        np.savez(
            out_dir / SEQUENCES_FILE,
            user_ids=self.user_ids.astype(str),
            beh_offsets=self.beh_offsets,
            beh_items=self.beh_items,
            beh_times=self.beh_times,
        )
        summary = self.summary() | (extra or {})
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))

    @classmethod
    def load(cls, out_dir: Path) -> Prepared:
        summary = json.loads((out_dir / SUMMARY_FILE).read_text())
        seq = np.load(out_dir / SEQUENCES_FILE, allow_pickle=False)
        return cls(
            name=summary["name"],
            protocol=summary["protocol"],
            has_timestamps=summary["has_timestamps"],
            items=pd.read_parquet(out_dir / ITEMS_FILE),
            user_ids=seq["user_ids"],
            beh_offsets=seq["beh_offsets"],
            beh_items=seq["beh_items"],
            beh_times=seq["beh_times"],
            samples=pd.read_parquet(out_dir / SAMPLES_FILE),
        )

    def train_period_behaviors(self) -> pd.DataFrame:
        """Behaviors (user_row, item_row; per user oldest first) before the user's first validation
        or test sample: the train period of the interaction log. Each user's first item is in it
        although it is not a sample, so counts made here miss nothing that train may see."""
        lengths = np.diff(self.beh_offsets)
        if self.protocol == "implicit-leave-last-out":  # the last two are val and test, always
            cutoff = np.maximum(lengths - 2, 0)  # (a 2-item user's first item is its val one)
        else:  # global time split: behaviors before the user's first held-out rating
            cutoff = lengths.copy()
            held_out = self.samples[self.samples["split"] != "train"]
            first = held_out.groupby("user_row")["hist_end"].min()
            rows = first.index.to_numpy()
            cutoff[rows] = np.minimum(cutoff[rows], first.to_numpy())
        users = np.repeat(np.arange(len(lengths)), lengths)
        position = np.arange(len(self.beh_items)) - self.beh_offsets[users]
        keep = position < cutoff[users]
        return pd.DataFrame(
            {"user_row": users[keep], "item_row": self.beh_items[keep].astype(np.int64)}
        )

    def histories(self, samples: pd.DataFrame, max_len: int, pad: int) -> np.ndarray:
        """Right-aligned behavior item rows [S, max_len] for samples; `pad` fills the rest."""
        return self._gather_histories(samples, max_len, self.beh_items, pad).astype(np.int64)

    def history_gaps(self, samples: pd.DataFrame, max_len: int) -> np.ndarray:
        """The gap buckets (uint8 [S, max_len]) aligned with `histories`; padding GAP_UNKNOWN."""
        return self._gather_histories(samples, max_len, self.gap_buckets(), GAP_UNKNOWN)

    def _gather_histories(
        self, samples: pd.DataFrame, max_len: int, values: np.ndarray, pad: int
    ) -> np.ndarray:
        start = self.beh_offsets[samples["user_row"].to_numpy()]
        end = start + samples["hist_end"].to_numpy()
        positions = end[:, None] - max_len + np.arange(max_len)[None, :]
        valid = positions >= start[:, None]
        gathered = values[np.clip(positions, 0, max(len(values) - 1, 0))]
        return np.where(valid, gathered, pad).astype(values.dtype)

    def gap_buckets(self) -> np.ndarray:
        """uint8 [T]: each behavior's time-gap bucket (contract.gap_buckets, per user)."""
        if self._gap_buckets is None:
            out = gap_buckets(self.beh_times)  # across user boundaries: fixed below
            firsts = self.beh_offsets[:-1][np.diff(self.beh_offsets) > 0]
            known = ~np.isnan(self.beh_times[firsts])
            out[firsts] = np.where(known, GAP_FIRST, GAP_UNKNOWN)
            self._gap_buckets = out
        return self._gap_buckets


def _time_ordered(raw: RawDataset, item_rows: dict[str, int]) -> pd.DataFrame:
    inter = raw.interactions[["user_id", "item_id", "timestamp", "order", "label"]].copy()
    inter["item_row"] = inter["item_id"].map(item_rows).astype(np.int64)
    keys = ["user_id", "timestamp", "order"] if raw.has_timestamps else ["user_id", "order"]
    return inter.sort_values(keys, kind="stable").reset_index(drop=True)


def _csr(users: np.ndarray, n_users: int) -> np.ndarray:
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.add.at(offsets, users + 1, 1)
    return np.cumsum(offsets)


def _sample_negatives(
    user_rows: np.ndarray,
    touched: np.ndarray,
    pool: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One uniform negative per positive among `pool` items the user never touched (rejection
    sampling). `pool` is the sorted item rows that occur in the interaction log: a catalog row
    nobody ever touched would be a trivially easy negative.

    `touched` is the sorted array of user_row * n_items + item_row keys of all interactions.
    """
    negatives = pool[rng.integers(0, len(pool), size=len(user_rows))]
    todo = np.arange(len(user_rows))
    for _ in range(1000):
        keys = user_rows[todo] * n_items + negatives[todo]
        pos = np.searchsorted(touched, keys)
        clash = (pos < len(touched)) & (touched[np.minimum(pos, len(touched) - 1)] == keys)
        todo = todo[clash]
        if len(todo) == 0:
            return negatives
        negatives[todo] = pool[rng.integers(0, len(pool), size=len(todo))]
    raise ValueError("could not sample negatives: some users touched (almost) every logged item")


def prepare(raw: RawDataset, cfg: PrepareConfig | None = None) -> Prepared:
    """Build id maps, sequences and samples from a loaded dataset (see the module docstring)."""
    cfg = cfg or PrepareConfig()
    items = raw.items.reset_index(drop=True).copy()
    items.insert(0, "item_row", np.arange(len(items), dtype=np.int64))
    item_rows = dict(zip(items["item_id"], items["item_row"], strict=True))
    inter = _time_ordered(raw, item_rows)
    user_ids, user_rows = np.unique(inter["user_id"].to_numpy(), return_inverse=True)
    inter["user_row"] = user_rows.astype(np.int64)
    position = inter.groupby("user_row").cumcount().to_numpy()
    length = inter.groupby("user_row")["item_row"].transform("size").to_numpy()
    n_items = len(items)

    if raw.explicit_labels:
        protocol = "explicit-global-time"
        labels = inter["label"].to_numpy()
        positive = labels >= 0.5
        # behaviors = the user's earlier positives; hist_end counts them before each rating
        before = inter.assign(p=positive.astype(np.int64)).groupby("user_row")["p"].cumsum()
        hist_end = before.to_numpy() - positive
        sort_keys = [inter["order"].to_numpy()]
        if raw.has_timestamps:
            sort_keys.append(inter["timestamp"].to_numpy())
        rank = np.empty(len(inter), dtype=np.int64)
        rank[np.lexsort(sort_keys)] = np.arange(len(inter))  # global time order
        n = len(inter)
        n_test, n_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
        split = np.where(
            rank >= n - n_test, "test", np.where(rank >= n - n_test - n_val, "val", "train")
        )
        samples = pd.DataFrame(
            {
                "user_row": inter["user_row"],
                "item_row": inter["item_row"],
                "label": labels.astype(np.float32),
                "hist_end": hist_end.astype(np.int64),
                "split": split,
            }
        )
        beh = inter[positive]
    else:
        protocol = "implicit-leave-last-out"
        keep = position >= 1
        split = np.where(
            position == length - 1, "test", np.where(position == length - 2, "val", "train")
        )
        pos = pd.DataFrame(
            {
                "user_row": inter["user_row"].to_numpy()[keep],
                "item_row": inter["item_row"].to_numpy()[keep],
                "label": np.float32(1.0),
                "hist_end": position[keep].astype(np.int64),
                "split": split[keep],
            }
        )
        touched = np.unique(inter["user_row"].to_numpy() * n_items + inter["item_row"].to_numpy())
        rng = np.random.default_rng(cfg.seed)
        neg = pos.copy()
        pool = np.unique(inter["item_row"].to_numpy())  # items that occur in the log
        neg["item_row"] = _sample_negatives(pos["user_row"].to_numpy(), touched, pool, n_items, rng)
        neg["label"] = np.float32(0.0)
        samples = pd.concat([pos, neg], ignore_index=True)
        beh = inter

    beh_users = beh["user_row"].to_numpy()
    return Prepared(
        name=raw.name,
        protocol=protocol,
        has_timestamps=raw.has_timestamps,
        items=items[["item_row", "item_id", "title", "text", "category"]],
        user_ids=user_ids.astype(str),
        beh_offsets=_csr(beh_users, len(user_ids)),
        beh_items=beh["item_row"].to_numpy().astype(np.int32),
        beh_times=beh["timestamp"].to_numpy().astype(np.float64),
        samples=samples.sort_values(["split", "user_row"], kind="stable").reset_index(drop=True),
    )
