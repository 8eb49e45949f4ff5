"""``recbole``: RecBole atomic TSV files ``X.inter`` (+ ``X.item``), typed headers ``name:type``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reaseq.offline.datasets.base import LoadReport, _Parsed, _Rows
from reaseq.offline.datasets.parsing import (
    _empty_items,
    _interactions,
    _is_movielens,
    _item_frame,
    _join_text,
    _lines,
    _split,
)


def _recbole_header(line: str, path: Path) -> list[tuple[str, str]]:
    """`name:type` header fields of a RecBole atomic file."""
    header = []
    for token in line.split("\t"):
        name, _, kind = token.strip().partition(":")
        header.append((name, kind or "token"))
    if not header or not header[0][0]:
        raise ValueError(f"{path}: expected a RecBole header like 'user_id:token\\t...'")
    return header


def _load_recbole(files: dict[str, Path | None], report: LoadReport) -> _Parsed:
    inter_path = files["inter"]
    assert inter_path is not None
    lines = _lines(inter_path)
    if not len(lines):
        raise ValueError(f"{inter_path}: empty file (expected a RecBole header line)")
    header = _recbole_header(lines[0], inter_path)
    names = [name for name, _ in header]
    if "user_id" not in names or "item_id" not in names:
        raise ValueError(f"{inter_path}: header {lines[0]!r} needs user_id and item_id columns")
    data = lines[1:]
    report.rows_read = len(data)
    rows = _Rows.of_lines(data, report)
    parts = _split(data, "\t", len(header), rows, "too_few_fields", "too_many_fields")
    wanted = ("user_id", "item_id", "timestamp", "rating", "label")
    columns = {name: parts[i] for i, name in enumerate(names) if name in wanted}
    inter = _interactions(rows, columns, np.arange(len(data)))

    items = _empty_items()
    item_path = files.get("item")
    if item_path is not None:
        items = _recbole_items(item_path, report)
    stem = inter_path.name.removesuffix(".inter")
    return _Parsed(
        inter,
        items,
        [p for p in (inter_path, item_path) if p],
        stem,
        has_timestamps="timestamp" in columns,
        has_ratings="rating" in columns,
        has_labels="label" in columns,
        movielens=_is_movielens(stem, inter_path.parent.name),
    )


def _recbole_items(path: Path, report: LoadReport) -> pd.DataFrame:
    """RecBole item file: title = first token_seq column; text = token_seq columns plus
    non-id token columns; category = category_id / category / class (first token) / genre."""
    lines = _lines(path)
    if not len(lines):
        return _empty_items()
    header = _recbole_header(lines[0], path)
    names = [name for name, _ in header]
    if "item_id" not in names:
        raise ValueError(f"{path}: header {lines[0]!r} needs an item_id column")
    data = lines[1:]
    rows = _Rows.of_lines(data, report)
    parts = _split(data, "\t", len(header), rows, "bad_item_row", "bad_item_row")
    ids = parts[names.index("item_id")].str.strip()
    rows.reject(ids == "", "bad_item_row")
    text_cols = [
        i
        for i, (name, kind) in enumerate(header)
        if kind == "token_seq" or (kind == "token" and not name.endswith("_id") and name != "asin")
    ]
    seq_cols = [i for i, (_, kind) in enumerate(header) if kind == "token_seq"]
    empty = pd.Series("", index=parts.index, dtype=str)
    titles = parts[seq_cols[0]] if seq_cols else empty
    category = empty
    for candidate in ("category_id", "category", "class", "genre"):
        if candidate in names:
            col = parts[names.index(candidate)]
            if header[names.index(candidate)][1] == "token_seq":
                col = col.str.split(" ", n=1, regex=False).str[0].fillna("")
            category = col
            break
    texts = [_join_text(fields) for fields in zip(*(parts[i] for i in text_cols), strict=True)]
    if not text_cols:
        texts = [""] * len(parts)
    keep = rows.ok
    return _item_frame(
        ids[keep], titles[keep], np.asarray(texts, dtype=object)[keep], category[keep], data[keep]
    )
