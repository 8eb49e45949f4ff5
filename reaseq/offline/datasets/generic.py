"""``generic``: ``interactions.csv|parquet`` (``user_id,item_id[,timestamp][,rating][,label]``) +
``items.csv|parquet`` (an ``item_id`` column and text columns)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reaseq.offline.datasets.base import LoadReport, _Parsed, _Rows
from reaseq.offline.datasets.parsing import (
    _BAD_ID,
    _as_text,
    _empty_items,
    _ids,
    _interactions,
    _is_movielens,
    _item_frame,
    _join_text,
    _missing,
    _pick,
)

_TEXT_PRIORITY = ("title", "name", "brand", "categories", "category")  # generic text order


def _read_csv(path: Path, rows_reason: str, report: LoadReport) -> tuple[pd.DataFrame, int]:
    """Read a CSV as strings; lines with too many fields are counted under `rows_reason`.

    The fast C parser is tried first; only a file with bad lines is re-read by the python
    engine, which can hand each bad line to us. Returns the frame and the bad-line count.
    """
    encoding = "utf-8-sig"
    try:
        with path.open(encoding=encoding) as handle:
            for _ in handle:
                pass
    except UnicodeDecodeError:
        encoding = "latin-1"
    kwargs: dict[str, Any] = {"dtype": str, "keep_default_na": False, "encoding": encoding}
    try:
        return pd.read_csv(path, **kwargs), 0
    except pd.errors.ParserError:
        pass
    bad: list[list[str]] = []
    frame = pd.read_csv(path, engine="python", on_bad_lines=bad.append, **kwargs)
    report.add(rows_reason, len(bad), (",".join(fields) for fields in bad))
    return frame, len(bad)


def _read_table(path: Path, rows_reason: str, report: LoadReport) -> tuple[pd.DataFrame, int]:
    """Read a generic CSV or parquet table (parquet has no line-level faults)."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path), 0
    return _read_csv(path, rows_reason, report)


def _frame_render(frame: pd.DataFrame) -> Callable[[np.ndarray], list[str]]:
    """Example text for table rows: the row's values joined back with commas."""

    def render(pos: np.ndarray) -> list[str]:
        return [
            ",".join("" if _missing(v) else str(v) for v in row) for row in frame.iloc[pos].values
        ]

    return render


def _load_generic(files: dict[str, Path | None], report: LoadReport) -> _Parsed:
    inter_path = files["inter"]
    assert inter_path is not None
    frame, n_bad = _read_table(inter_path, "too_many_fields", report)
    missing = {"user_id", "item_id"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"{inter_path}: needs columns user_id and item_id (optional timestamp, label, "
            f"rating); found {list(frame.columns)}"
        )
    report.rows_read = len(frame) + n_bad
    rows = _Rows(len(frame), _frame_render(frame), report)
    if inter_path.suffix != ".parquet" and len(frame.columns):
        rows.reject(frame[frame.columns[-1]].isna().to_numpy(), "too_few_fields")
    wanted = ("user_id", "item_id", "timestamp", "rating", "label")
    columns = {c: frame[c] for c in wanted if c in frame.columns}
    inter = _interactions(rows, columns, np.arange(len(frame)), iso_time=True)

    items = _empty_items()
    item_path = files.get("item")
    if item_path is not None:
        items = _generic_items(item_path, report)
    return _Parsed(
        inter,
        items,
        [p for p in (inter_path, item_path) if p],
        inter_path.parent.name,
        has_timestamps="timestamp" in columns,
        has_ratings="rating" in columns,
        has_labels="label" in columns,
        movielens=_is_movielens(inter_path.parent.name),
    )


def _generic_items(path: Path, report: LoadReport) -> pd.DataFrame:
    """Generic item table: title = title/name column; text = all non-id text columns (title,
    brand, categories first, then file order); category = `category` (else `category_id`)."""
    frame, _ = _read_table(path, "bad_item_row", report)
    if "item_id" not in frame.columns:
        raise ValueError(f"{path}: needs an item_id column; found {list(frame.columns)}")
    rows = _Rows(len(frame), _frame_render(frame), report)
    if path.suffix != ".parquet" and len(frame.columns):
        rows.reject(frame[frame.columns[-1]].isna().to_numpy(), "bad_item_row")
    ids = _ids(frame["item_id"])
    rows.reject((ids == "") | (ids == _BAD_ID), "bad_item_row")
    text_cols = [c for c in frame.columns if c != "item_id" and _is_text_column(frame[c], c)]
    title_col = next((c for c in ("title", "name") if c in text_cols), None)
    text_cols.sort(key=lambda c: _TEXT_PRIORITY.index(c) if c in _TEXT_PRIORITY else 99)
    empty = pd.Series([""] * len(frame), dtype=object)
    titles = frame[title_col] if title_col is not None else empty
    cat_col = next((c for c in ("category", "category_id") if c in frame.columns), None)
    cats = frame[cat_col].map(_as_text) if cat_col is not None else empty
    texts = [_join_text(fields) for fields in zip(*(frame[c] for c in text_cols), strict=True)]
    if not text_cols:
        texts = [""] * len(frame)
    keep = rows.ok
    raw = _frame_render(frame)(np.flatnonzero(keep))
    return _item_frame(ids[keep], titles[keep], _pick(texts, keep), cats[keep], raw)


def _is_text_column(column: pd.Series, name: str) -> bool:
    """Text worth encoding: not an id and not purely numeric (prices, years, counts)."""
    if name.endswith("_id") or name == "id":
        return False
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        return False
    text = column.map(_as_text)
    filled = text[text != ""]
    return bool(len(filled)) and bool(pd.to_numeric(filled, errors="coerce").isna().any())
