"""``lcrec-json``: ``X.inter.json`` (``{user: [items, chronological]}``, no timestamps) +
``X.item.json`` (``{item: {title, description, brand, categories}}``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reaseq.offline.datasets.base import LoadReport, _Parsed, _Rows
from reaseq.offline.datasets.parsing import (
    _empty_items,
    _interactions,
    _item_frame,
    _meta_fields,
    _read_text,
)


def _load_lcrec(files: dict[str, Path | None], report: LoadReport) -> _Parsed:
    inter_path = files["inter"]
    assert inter_path is not None
    sequences = _load_json(inter_path)
    users: list[object] = []
    items: list[object] = []
    for user, seq in sequences.items():
        if not isinstance(seq, list):
            report.rows_read += 1
            report.add("bad_sequence", 1, [f"{json.dumps(user)}: {json.dumps(seq)}"])
            continue
        users.extend([user] * len(seq))
        items.extend(seq)
    report.rows_read += len(users)

    def render(pos: np.ndarray) -> list[str]:
        return [f"{json.dumps(users[p])}: {json.dumps(items[p])}" for p in pos]

    rows = _Rows(len(users), render, report)
    columns = {"user_id": pd.Series(users, dtype=object), "item_id": pd.Series(items, dtype=object)}
    inter = _interactions(rows, columns, np.arange(len(users)))

    table = _empty_items()
    item_path = files.get("item")
    if item_path is not None:
        table = _lcrec_items(_load_json(item_path), report)
    name = inter_path.name.removesuffix(".inter.json")
    return _Parsed(
        inter,
        table,
        [p for p in (inter_path, item_path) if p],
        name,
        has_timestamps=False,
        has_ratings=False,
        has_labels=False,
        movielens=False,
    )


def _load_json(path: Path) -> dict[str, Any]:
    """A whole-file JSON object; a broken file has no rows to count, so it is a clear error."""
    try:
        obj = json.loads(_read_text(path))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return obj


def _lcrec_items(table: dict[str, Any], report: LoadReport) -> pd.DataFrame:
    ids, titles, texts, categories, raw = [], [], [], [], []
    for key, meta in table.items():
        if not isinstance(meta, dict) or not key.strip():
            report.add("bad_item_row", 1, [f"{json.dumps(key)}: {json.dumps(meta)}"])
            continue
        title, text, category = _meta_fields(meta)
        ids.append(key.strip())
        titles.append(title)
        texts.append(text)
        categories.append(category)
        raw.append(key)  # keys of a JSON object are unique: no duplicate rows to show
    return _item_frame(ids, titles, texts, categories, raw)
