"""Helpers every format shares: reading text files, turning raw fields into ids, numbers, epoch
seconds and encoder text, and validating parsed columns into the interaction contract.

Item categories from category paths (lcrec-json, amazon-json) use the third path element when
there is one (e.g. "Adhesive Tapes" under "Industrial & Scientific > Tapes, Adhesives &
Sealants"), else the last: the root is shared by every item and the second level is too coarse
to separate product kinds, while deeper levels are too sparse to learn from.
"""

from __future__ import annotations

import gzip
import html
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reaseq.offline.datasets.base import _Rows

_MS_THRESHOLD = 1e11  # epoch values above this are milliseconds (1e11 s is the year 5138)


_BAD_ID = "\x00bad"  # sentinel for ids of an unusable type (lists, floats with decimals, ...)


_PATH_SPLIT = re.compile(r",(?=\S)")  # "A,Tapes, Adhesives & Sealants,B": commas inside names


_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def _read_text(path: Path) -> str:
    """Decode UTF-8, falling back to latin-1 because the original MovieLens files are latin-1."""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _lines(path: Path) -> np.ndarray:
    """Non-blank lines of a text file as an object array (blank lines are layout, not rows)."""
    lines = (line.rstrip("\r") for line in _read_text(path).split("\n"))
    return np.array([line for line in lines if line.strip()], dtype=object)


def _split(
    lines: np.ndarray, sep: str, n_fields: int, rows: _Rows, few: str, many: str
) -> pd.DataFrame:
    """Split delimited lines into exactly `n_fields` string columns, rejecting wrong counts.

    Plain `str.split` per line beats pandas' string accessor several times over here."""
    split = [line.split(sep) for line in lines]
    counts = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    rows.reject(counts < n_fields, few)
    rows.reject(counts > n_fields, many)
    blank = [""] * n_fields
    fields = [parts if len(parts) == n_fields else blank for parts in split]
    columns = list(zip(*fields, strict=True)) if fields else [()] * n_fields
    return pd.DataFrame({i: np.array(col, dtype=object) for i, col in enumerate(columns)})


def _missing(value: Any) -> bool:
    """None, NaN and NaT count as absent."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _id_value(value: object) -> str:
    """An id as text: strings as written (trimmed), integers as decimals, '' when absent."""
    if type(value) is str:
        return value.strip()
    if type(value) is int:
        return str(value)
    if _missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return _BAD_ID
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return _BAD_ID


def _ids(column: pd.Series) -> np.ndarray:
    """Vectorised `_id_value` for string columns, element-wise for typed (JSON/parquet) ones."""
    if isinstance(column.dtype, pd.StringDtype):
        return column.fillna("").str.strip().to_numpy(dtype=object)
    return column.map(_id_value).to_numpy(dtype=object)


def _as_text(value: object) -> str:
    """Any field as flat text: lists (JSON/parquet) are joined, absent values are ''."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(t for t in (_as_text(v) for v in value) if t)
    return "" if _missing(value) else str(value)


def _clean(value: object) -> str:
    """Text without HTML entities, tags or runs of whitespace (common in Amazon metadata)."""
    text = _as_text(value)
    if "&" in text:
        text = html.unescape(text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    return " ".join(text.split())


def _join_text(parts: Iterable[object]) -> str:
    """Fields as one passage with sentence breaks, so an encoder reads them as separate facts."""
    out = ""
    for part in parts:
        piece = _clean(part)
        if not piece:
            continue
        if out:
            out += " " if out[-1] in ".!?" else ". "
        out += piece
    return out


def _category_path(value: object) -> list[str]:
    """A category path from a comma-joined string or a list (first path of a list of lists)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) and isinstance(value[0], (list, tuple, np.ndarray)):
            return _category_path(value[0])
        return [c for c in (_clean(v) for v in value) if c]
    text = _as_text(value)
    return [c for c in (_clean(p) for p in _PATH_SPLIT.split(text)) if c] if text else []


def _path_category(path: Sequence[str]) -> str:
    """Third path level if present, else the last (see the module docstring for why)."""
    return path[2] if len(path) >= 3 else (path[-1] if path else "")


def _numbers(column: pd.Series) -> np.ndarray:
    """Finite floats, NaN for anything unparseable (JSON lists, booleans, text)."""
    if column.dtype == object:
        column = column.map(_plain_number)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan).copy()
    values[~np.isfinite(values)] = np.nan
    return values


def _plain_number(value: object) -> object:
    """Keep scalars `to_numeric` can read; anything else (lists, dicts, bools) becomes None."""
    ok = isinstance(value, (str, int, float, np.number)) and not isinstance(value, bool)
    return value if ok else None


def _seconds(column: pd.Series, iso: bool) -> np.ndarray:
    """Epoch seconds from numbers (milliseconds recognised by size) or, if `iso`, ISO strings."""
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = pd.to_datetime(column, utc=True)
        return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(na_value=np.nan)
    values = _numbers(column)
    values = np.where(np.abs(values) >= _MS_THRESHOLD, values / 1000.0, values)
    todo = np.isnan(values)
    if iso and todo.any():
        text = column[todo].map(_as_text)
        stamps = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        since = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        values[todo] = since.to_numpy(dtype=float, na_value=np.nan)
    return values


def _interactions(
    rows: _Rows, columns: dict[str, pd.Series], order: np.ndarray, iso_time: bool = False
) -> pd.DataFrame:
    """Validate parsed columns (user_id, item_id, optional timestamp/rating/label) into the
    contract's interaction frame, dropping and counting bad rows."""
    n = len(order)
    users = _ids(columns["user_id"])
    rows.reject(users == "", "missing_user_id")
    rows.reject(users == _BAD_ID, "bad_user_id")
    items = _ids(columns["item_id"])
    rows.reject(items == "", "missing_item_id")
    rows.reject(items == _BAD_ID, "bad_item_id")
    nan = np.full(n, np.nan)
    timestamp, rating, label = nan, nan.copy(), nan.copy()
    if "timestamp" in columns:
        timestamp = _seconds(columns["timestamp"], iso_time)
        rows.reject(np.isnan(timestamp), "bad_timestamp")
    if "rating" in columns:
        rating = _numbers(columns["rating"])
        rows.reject(np.isnan(rating), "bad_rating")
    if "label" in columns:
        label = _numbers(columns["label"])
        rows.reject(~np.isin(label, (0.0, 1.0)), "bad_label")
    keep = rows.ok
    return pd.DataFrame(
        {
            "user_id": pd.array(users[keep], dtype=str),
            "item_id": pd.array(items[keep], dtype=str),
            "timestamp": timestamp[keep].astype(np.float64),
            "rating": rating[keep].astype(np.float64),
            "label": label[keep].astype(np.float64),
            "order": np.asarray(order)[keep].astype(np.int64),
        }
    )


def _item_frame(
    ids: Iterable[str],
    titles: Iterable[object],
    texts: Iterable[str],
    categories: Iterable[str],
    raw: Iterable[str],
) -> pd.DataFrame:
    """Item table in contract columns plus the raw source line for report examples."""
    return pd.DataFrame(
        {
            "item_id": pd.array(list(ids), dtype=str),
            "title": pd.array([_clean(t) for t in titles], dtype=str),
            "text": pd.array(list(texts), dtype=str),
            "category": pd.array([_clean(c) for c in categories], dtype=str),
            "_raw": pd.array(list(raw), dtype=str),
        }
    )


def _empty_items() -> pd.DataFrame:
    return _item_frame([], [], [], [], [])


def _meta_fields(meta: dict[str, Any]) -> tuple[str, str, str]:
    """(title, text, category) from an Amazon-style metadata record of any vintage."""
    title = meta.get("title")
    brand = meta.get("brand") or meta.get("store")
    path = _category_path(meta.get("categories") or meta.get("category"))
    prose = [meta.get("description"), meta.get("feature") or meta.get("features")]
    sentences = [s for p in prose for s in (p if isinstance(p, list) else [p])]
    text = _join_text([title, brand, " > ".join(path), *sentences])
    return _clean(title), text, _path_category(path)


def _pick(values: list[str], keep: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=object)[keep] if len(values) else np.asarray([], dtype=object)


def _is_movielens(*names: str) -> bool:
    """MovieLens data by name: 'ml-...' or containing 'movielens' (RecBole ml-100k, ml-1m...)."""
    return any(n.lower().startswith("ml-") or "movielens" in n.lower() for n in names)
