"""``amazon-json``: Amazon review JSON lines + ``meta_*.json[.gz]`` (2014 meta lines are Python
literals, parsed with `ast.literal_eval` when strict JSON fails)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reaseq.offline.datasets.base import LoadReport, _Parsed, _Rows
from reaseq.offline.datasets.parsing import (
    _BAD_ID,
    _empty_items,
    _id_value,
    _interactions,
    _item_frame,
    _lines,
    _meta_fields,
)

_ASIN = re.compile(r"""['"](?:parent_asin|asin)['"]\s*:\s*['"]([^'"]+)['"]""")


def _parse_object(line: str) -> dict[str, Any] | None:
    """One JSON-lines record; 2014 Amazon meta lines are Python literals, so try those too."""
    try:
        obj = json.loads(line)
    except ValueError:
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None


def _load_amazon_json(files: dict[str, Path | None], report: LoadReport) -> _Parsed:
    """Amazon review lines (2014/2018 keys, 2023 keys too) + meta lines of the same category."""
    inter_path = files["inter"]
    assert inter_path is not None
    lines = _lines(inter_path)
    report.rows_read = len(lines)
    keys = {
        "user_id": ("reviewerID", "user_id"),
        "item_id": ("parent_asin", "asin"),
        "rating": ("overall", "rating"),
        "timestamp": ("unixReviewTime", "timestamp"),
    }
    values: dict[str, list[object]] = {k: [] for k in keys}
    seen: set[str] = set()
    order, raw = [], []
    for position, line in enumerate(lines):
        record = _parse_object(line)
        if record is None:
            report.add("bad_json", 1, [line])
            continue
        for column, names in keys.items():
            value = next((record[k] for k in names if k in record), None)
            values[column].append(value)
            if value is not None:
                seen.add(column)
        order.append(position)
        raw.append(line)
    rows = _Rows(len(order), lambda pos: [raw[p] for p in pos], report)
    columns = {
        k: pd.Series(v, dtype=object)
        for k, v in values.items()
        if k in seen or k in ("user_id", "item_id")
    }
    inter = _interactions(rows, columns, np.asarray(order, dtype=np.int64))

    items = _empty_items()
    meta_path = files.get("item")
    if meta_path is not None:
        items = _amazon_meta(meta_path, set(inter["item_id"]), report)
    name = inter_path.parent.name
    return _Parsed(
        inter,
        items,
        [p for p in (inter_path, meta_path) if p],
        name,
        has_timestamps="timestamp" in seen,
        has_ratings="rating" in seen,
        has_labels=False,
        movielens=False,
    )


def _amazon_meta(path: Path, needed: set[str], report: LoadReport) -> pd.DataFrame:
    """Meta lines for the reviewed items only: a meta file covers the whole category (often 10x
    the reviewed items), so lines whose ASIN is not needed are skipped before parsing."""
    ids, titles, texts, categories, raw = [], [], [], [], []
    for line in _lines(path):
        found = _ASIN.findall(line)
        if found and not needed.intersection(found):
            continue
        record = _parse_object(line)
        item = _id_value(record.get("parent_asin") or record.get("asin")) if record else ""
        if record is None or item in ("", _BAD_ID):
            report.add("bad_item_row", 1, [line])
            continue
        if item not in needed:
            continue
        title, text, category = _meta_fields(record)
        ids.append(item)
        titles.append(title)
        texts.append(text)
        categories.append(category)
        raw.append(line)
    return _item_frame(ids, titles, texts, categories, raw)
