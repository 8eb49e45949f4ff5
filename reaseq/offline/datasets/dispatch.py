"""`load_dataset`: detect the format, run its loader, then apply the rules shared by every
format (unique items covering every interaction, click labels)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from reaseq.offline.datasets.amazon_json import _load_amazon_json
from reaseq.offline.datasets.base import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    MAX_EXAMPLES,
    LabelMode,
    LoadReport,
    RawDataset,
    _Parsed,
)
from reaseq.offline.datasets.detect import _LOOKED_FOR, _find_files, detect_format
from reaseq.offline.datasets.generic import _load_generic
from reaseq.offline.datasets.lcrec import _load_lcrec
from reaseq.offline.datasets.movielens import _load_movielens_100k, _load_movielens_dat
from reaseq.offline.datasets.parsing import _item_frame
from reaseq.offline.datasets.recbole import _load_recbole

_LOADERS: dict[str, Callable[[dict[str, Path | None], LoadReport], _Parsed]] = {
    "recbole": _load_recbole,
    "lcrec-json": _load_lcrec,
    "movielens-dat": _load_movielens_dat,
    "movielens-100k": _load_movielens_100k,
    "amazon-json": _load_amazon_json,
    "generic": _load_generic,
}


def _complete_items(parsed: _Parsed, report: LoadReport) -> pd.DataFrame:
    """Unique item rows covering every interacted item (the contract later stages rely on)."""
    items = parsed.items
    exact = items.duplicated(subset=list(ITEM_COLUMNS), keep="first").to_numpy()
    report.add("duplicate_item_row", int(exact.sum()), items["_raw"][exact].head(MAX_EXAMPLES))
    items = items[~exact]
    clash = items.duplicated(subset="item_id", keep="first").to_numpy()
    report.add("conflicting_item_row", int(clash.sum()), items["_raw"][clash].head(MAX_EXAMPLES))
    items = items[~clash]
    interacted = parsed.interactions["item_id"]
    absent = pd.unique(interacted[~interacted.isin(items["item_id"])].to_numpy()).tolist()
    report.add("item_without_metadata", len(absent), absent[:MAX_EXAMPLES])
    if absent:
        blank = [""] * len(absent)
        items = pd.concat([items, _item_frame(absent, blank, blank, blank, blank)])
    return items[list(ITEM_COLUMNS)].reset_index(drop=True)


def _labels(parsed: _Parsed, labels: str, threshold: float, fmt: str) -> tuple[np.ndarray, bool]:
    """Click labels per the `labels` mode: explicit from a label column or rating threshold."""
    if labels not in ("auto", "explicit", "implicit"):
        raise ValueError(f"labels must be 'auto', 'explicit' or 'implicit', not {labels!r}")
    inter = parsed.interactions
    if labels == "auto":
        explicit = parsed.has_labels or (parsed.movielens and parsed.has_ratings)
    else:
        explicit = labels == "explicit"
    if not explicit:
        return np.full(len(inter), np.nan), False
    if parsed.has_labels:
        return inter["label"].to_numpy(dtype=np.float64), True
    if parsed.has_ratings:
        return (inter["rating"].to_numpy() >= threshold).astype(np.float64), True
    raise ValueError(
        f"labels='explicit' needs ratings or a label column, but {parsed.name} ({fmt}) has "
        "neither; use labels='implicit' (positives only, sample negatives) or add a label column"
    )


def load_dataset(
    path: str | Path,
    format: str = "auto",
    labels: LabelMode = "auto",
    rating_threshold: float = 4.0,
    name: str | None = None,
) -> RawDataset:
    """Load a dataset directory (or one of its files) in any of `FORMATS`.

    labels="auto" is explicit for MovieLens data (label = rating >= rating_threshold) and for
    data with a label column, implicit (label NaN) otherwise: Amazon ratings are mostly 4-5
    stars, so a rating threshold is no click signal there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    fmt = detect_format(path) if format == "auto" else format
    files = _find_files(fmt, path)
    if files is None:
        raise ValueError(f"{path}: no {fmt} files found; {fmt} looks for {_LOOKED_FOR}")
    sources = [p for p in files.values() if p is not None]
    report = LoadReport(source=", ".join(str(p) for p in sources), format=fmt)
    parsed = _LOADERS[fmt](files, report)
    label, explicit = _labels(parsed, labels, rating_threshold, fmt)
    inter = parsed.interactions.assign(label=label)[list(INTERACTION_COLUMNS)]
    items = _complete_items(parsed, report)
    report.rows_kept = len(inter)
    return RawDataset(
        name=name or parsed.name,
        interactions=inter.reset_index(drop=True),
        items=items,
        has_timestamps=parsed.has_timestamps,
        explicit_labels=explicit,
        report=report,
    )
