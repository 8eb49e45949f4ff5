"""MovieLens: ``movielens-dat`` (``ratings.dat`` + ``movies.dat``, ``::`` separated, latin-1)
and ``movielens-100k`` (``u.data`` tab separated + ``u.item`` ``|`` separated, latin-1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reaseq.offline.datasets.base import LoadReport, _Parsed, _Rows
from reaseq.offline.datasets.parsing import (
    _empty_items,
    _interactions,
    _item_frame,
    _join_text,
    _lines,
    _pick,
    _split,
)

# the order of u.item's 19 trailing genre flags
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def _load_movielens_dat(files: dict[str, Path | None], report: LoadReport) -> _Parsed:
    inter = _delimited_ratings(files["inter"], "::", report)
    items = _empty_items()
    item_path = files.get("item")
    if item_path is not None:
        lines = _lines(item_path)
        rows = _Rows.of_lines(lines, report)
        parts = _split(lines, "::", 3, rows, "bad_item_row", "bad_item_row")
        ids = parts[0].str.strip()
        rows.reject(ids == "", "bad_item_row")
        genres = [
            [g for g in text.split("|") if g and g != "(no genres listed)"] for text in parts[2]
        ]
        texts = [_join_text([t, ", ".join(g)]) for t, g in zip(parts[1], genres, strict=True)]
        cats = [g[0] if g else "" for g in genres]
        keep = rows.ok
        items = _item_frame(
            ids[keep], parts[1][keep], _pick(texts, keep), _pick(cats, keep), lines[keep]
        )
    return _movielens(files, inter, items)


def _load_movielens_100k(files: dict[str, Path | None], report: LoadReport) -> _Parsed:
    inter = _delimited_ratings(files["inter"], "\t", report)
    items = _empty_items()
    item_path = files.get("item")
    if item_path is not None:
        lines = _lines(item_path)
        rows = _Rows.of_lines(lines, report)
        n_fields = 5 + len(ML100K_GENRES)
        parts = _split(lines, "|", n_fields, rows, "bad_item_row", "bad_item_row")
        ids = parts[0].str.strip()
        rows.reject(ids == "", "bad_item_row")
        flags = parts.iloc[:, 5:].apply(lambda c: c.str.strip()).to_numpy(dtype=str)
        rows.reject(~np.isin(flags, ("0", "1")).all(axis=1), "bad_item_row")
        genres = [[g for g, f in zip(ML100K_GENRES, row, strict=True) if f == "1"] for row in flags]
        texts = [_join_text([t, ", ".join(g)]) for t, g in zip(parts[1], genres, strict=True)]
        cats = [g[0] if g else "" for g in genres]
        keep = rows.ok
        items = _item_frame(
            ids[keep], parts[1][keep], _pick(texts, keep), _pick(cats, keep), lines[keep]
        )
    return _movielens(files, inter, items)


def _delimited_ratings(path: Path | None, sep: str, report: LoadReport) -> pd.DataFrame:
    """MovieLens `user sep item sep rating sep timestamp` lines (no header)."""
    assert path is not None
    lines = _lines(path)
    report.rows_read = len(lines)
    rows = _Rows.of_lines(lines, report)
    parts = _split(lines, sep, 4, rows, "too_few_fields", "too_many_fields")
    columns = {"user_id": parts[0], "item_id": parts[1], "rating": parts[2], "timestamp": parts[3]}
    return _interactions(rows, columns, np.arange(len(lines)))


def _movielens(files: dict[str, Path | None], inter: pd.DataFrame, items: pd.DataFrame) -> _Parsed:
    inter_path = files["inter"]
    assert inter_path is not None
    return _Parsed(
        inter,
        items,
        [p for p in (inter_path, files.get("item")) if p],
        inter_path.parent.name,
        has_timestamps=True,
        has_ratings=True,
        has_labels=False,
        movielens=True,
    )
