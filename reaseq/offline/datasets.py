"""Load recommendation datasets from the formats users actually bring into one tidy shape.

Every loader returns the same `RawDataset`: an interaction table with string ids, float seconds
and a source-order tie-breaker, plus an item table with text for a sentence encoder. Malformed
rows are counted per reason in a `LoadReport` (with a few raw examples) instead of crashing the
load or vanishing silently, so a user can see what their file lost and why. Each bad row is
counted once, under the first check it fails, so interaction reasons add up to
`rows_read - rows_kept`; item-table reasons (see `ITEM_REASONS`) never drop interactions.

Formats (see `detect_format` for the file names each one is recognised by):

- ``recbole``: RecBole atomic TSV files ``X.inter`` (+ ``X.item``), typed headers ``name:type``.
- ``lcrec-json``: ``X.inter.json`` (``{user: [items, chronological]}``, no timestamps) +
  ``X.item.json`` (``{item: {title, description, brand, categories}}``).
- ``movielens-dat``: ``ratings.dat`` + ``movies.dat`` (``::`` separated, latin-1).
- ``movielens-100k``: ``u.data`` (tab separated) + ``u.item`` (``|`` separated, latin-1).
- ``amazon-json``: Amazon review JSON lines + ``meta_*.json[.gz]`` (2014 meta lines are Python
  literals, parsed with `ast.literal_eval` when strict JSON fails).
- ``generic``: ``interactions.csv|parquet`` + ``items.csv|parquet``.

Item categories from category paths (lcrec-json, amazon-json) use the third path element when
there is one (e.g. "Adhesive Tapes" under "Industrial & Scientific > Tapes, Adhesives &
Sealants"), else the last: the root is shared by every item and the second level is too coarse
to separate product kinds, while deeper levels are too sparse to learn from.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

FORMATS = ("recbole", "lcrec-json", "movielens-dat", "movielens-100k", "amazon-json", "generic")
LabelMode = Literal["auto", "explicit", "implicit"]
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "label", "order")
ITEM_COLUMNS = ("item_id", "title", "text", "category")
ITEM_REASONS = frozenset(
    {"item_without_metadata", "duplicate_item_row", "conflicting_item_row", "bad_item_row"}
)
# the order of u.item's 19 trailing genre flags
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 200
_MS_THRESHOLD = 1e11  # epoch values above this are milliseconds (1e11 s is the year 5138)
_BAD_ID = "\x00bad"  # sentinel for ids of an unusable type (lists, floats with decimals, ...)
_JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")
_PATH_SPLIT = re.compile(r",(?=\S)")  # "A,Tapes, Adhesives & Sealants,B": commas inside names
_TEXT_PRIORITY = ("title", "name", "brand", "categories", "category")  # generic text order
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_ASIN = re.compile(r"""['"](?:parent_asin|asin)['"]\s*:\s*['"]([^'"]+)['"]""")


@dataclass
class LoadReport:
    """What a load read, kept and rejected, so data problems are visible instead of silent."""

    source: str
    format: str
    rows_read: int = 0
    rows_kept: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, count: int, examples: Iterable[str] = ()) -> None:
        """Count `count` rows under `reason`, keeping the first few raw lines as evidence."""
        if count <= 0:
            return
        self.malformed[reason] = self.malformed.get(reason, 0) + count
        kept = self.examples.setdefault(reason, [])
        for line in examples:
            if len(kept) >= MAX_EXAMPLES:
                break
            kept.append(str(line)[:EXAMPLE_CHARS])

    def summary(self) -> str:
        """Readable multi-line account of the load, for logs and CLI output."""
        share = self.rows_kept / self.rows_read if self.rows_read else 1.0
        lines = [
            f"{self.format} data from {self.source}",
            f"  interactions: {self.rows_read:,} read, {self.rows_kept:,} kept ({share:.2%})",
        ]
        if not self.malformed:
            lines.append("  malformed: none")
        for reason, count in sorted(self.malformed.items(), key=lambda kv: (-kv[1], kv[0])):
            where = "item table, interactions kept" if reason in ITEM_REASONS else "dropped"
            example = self.examples.get(reason)
            tail = f"  e.g. {example[0]!r}" if example else ""
            lines.append(f"  {reason}: {count:,} ({where}){tail}")
        return "\n".join(lines)


@dataclass
class RawDataset:
    """One dataset in the shape every later stage expects, whatever the source format."""

    name: str
    # user_id, item_id (str, as in the source), timestamp (float64 epoch seconds, NaN without
    # time), rating (float64, NaN if none), label (float64 0/1, NaN if implicit), order (int64
    # position in the source: the tie-breaker for equal or missing timestamps); source order
    interactions: pd.DataFrame
    # item_id, title, text (fields joined for a sentence encoder), category ('' if unknown);
    # unique ids, covering every interacted item (blank rows for items without metadata)
    items: pd.DataFrame
    has_timestamps: bool
    explicit_labels: bool  # labels come from the data (a label column or a rating threshold)
    report: LoadReport


@dataclass
class _Parsed:
    """A format loader's output before the shared item-table and label rules are applied."""

    interactions: pd.DataFrame
    items: pd.DataFrame  # ITEM_COLUMNS + "_raw" (the source line, for report examples)
    sources: list[Path]
    name: str
    has_timestamps: bool
    has_ratings: bool
    has_labels: bool
    movielens: bool


class _Rows:
    """Tracks which rows are still valid, so each bad row is counted once, under its first fault."""

    def __init__(self, n: int, render: Callable[[np.ndarray], list[str]], report: LoadReport):
        self.ok = np.ones(n, dtype=bool)
        self.render = render
        self.report = report

    @classmethod
    def of_lines(cls, lines: np.ndarray, report: LoadReport) -> _Rows:
        """Rows whose examples are the raw source lines."""
        return cls(len(lines), lambda pos: [str(lines[p]) for p in pos], report)

    def reject(self, bad: Any, reason: str) -> None:
        """Drop rows flagged in `bad` that are still valid and count them under `reason`."""
        flagged = np.asarray(bad, dtype=bool) & self.ok
        count = int(flagged.sum())
        if count:
            self.report.add(reason, count, self.render(np.flatnonzero(flagged)[:MAX_EXAMPLES]))
            self.ok &= ~flagged


# ----------------------------------------------------------------------------- file helpers


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


# ----------------------------------------------------------------------------- value helpers


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


# ----------------------------------------------------------------------------- format loaders


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


def _meta_fields(meta: dict[str, Any]) -> tuple[str, str, str]:
    """(title, text, category) from an Amazon-style metadata record of any vintage."""
    title = meta.get("title")
    brand = meta.get("brand") or meta.get("store")
    path = _category_path(meta.get("categories") or meta.get("category"))
    prose = [meta.get("description"), meta.get("feature") or meta.get("features")]
    sentences = [s for p in prose for s in (p if isinstance(p, list) else [p])]
    text = _join_text([title, brand, " > ".join(path), *sentences])
    return _clean(title), text, _path_category(path)


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


def _pick(values: list[str], keep: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=object)[keep] if len(values) else np.asarray([], dtype=object)


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


_LOADERS: dict[str, Callable[[dict[str, Path | None], LoadReport], _Parsed]] = {
    "recbole": _load_recbole,
    "lcrec-json": _load_lcrec,
    "movielens-dat": _load_movielens_dat,
    "movielens-100k": _load_movielens_100k,
    "amazon-json": _load_amazon_json,
    "generic": _load_generic,
}


# ----------------------------------------------------------------------------- detection


def _is_movielens(*names: str) -> bool:
    """MovieLens data by name: 'ml-...' or containing 'movielens' (RecBole ml-100k, ml-1m...)."""
    return any(n.lower().startswith("ml-") or "movielens" in n.lower() for n in names)


def _unique(candidates: list[Path], what: str, directory: Path) -> Path | None:
    """The one candidate file, None if there is none, a clear error if the choice is ambiguous."""
    if len(candidates) > 1:
        names = ", ".join(sorted(p.name for p in candidates))
        raise ValueError(
            f"{directory}: several {what} files ({names}); pass the path of the one to load"
        )
    return candidates[0] if candidates else None


def _sibling(directory: Path, *names: str) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


def _is_json(name: str) -> bool:
    return name.endswith(_JSON_SUFFIXES)


def _amazon_key(name: str) -> str:
    """Category key shared by a review file and its meta file ('reviews_X_5.json.gz' -> 'x')."""
    for suffix in _JSON_SUFFIXES:
        name = name.removesuffix(suffix)
    name = name.removeprefix("reviews_").removeprefix("meta_").removesuffix("_5")
    return name.lower()


def _find_files(fmt: str, path: Path) -> dict[str, Path | None] | None:
    """The files `fmt` would read under `path` (a directory, or one of the format's files);
    None when `path` does not look like `fmt`."""
    directory, chosen = (path.parent, path) if path.is_file() else (path, None)
    name = chosen.name if chosen is not None else ""
    files = sorted(p for p in directory.iterdir() if p.is_file())

    def pick(inter_suffix: str, item_suffix: str) -> dict[str, Path | None] | None:
        """Stem-paired files such as X.inter + X.item; a chosen file selects its stem."""
        if chosen is None:
            inter = _unique(
                [p for p in files if p.name.endswith(inter_suffix)], f"*{inter_suffix}", path
            )
        elif name.endswith((inter_suffix, item_suffix)):
            stem = name.removesuffix(inter_suffix).removesuffix(item_suffix)
            inter = _sibling(directory, stem + inter_suffix)
        else:
            return None
        if inter is None:
            return None
        stem = inter.name.removesuffix(inter_suffix)
        return {"inter": inter, "item": _sibling(directory, stem + item_suffix)}

    def fixed(inter_name: str, item_name: str) -> dict[str, Path | None] | None:
        """Fixed file names such as ratings.dat + movies.dat."""
        if chosen is not None and name not in (inter_name, item_name):
            return None
        inter = _sibling(directory, inter_name)
        return {"inter": inter, "item": _sibling(directory, item_name)} if inter else None

    if fmt == "recbole":
        return pick(".inter", ".item")
    if fmt == "lcrec-json":
        return pick(".inter.json", ".item.json")
    if fmt == "movielens-dat":
        return fixed("ratings.dat", "movies.dat")
    if fmt == "movielens-100k":
        return fixed("u.data", "u.item")
    if fmt == "amazon-json":
        return _find_amazon(directory, chosen, files, path)
    if fmt == "generic":
        if chosen is not None and chosen.suffix in (".csv", ".parquet") and chosen.stem != "items":
            inter: Path | None = chosen
        elif chosen is None or chosen.stem == "items":
            inter = _sibling(directory, "interactions.csv", "interactions.parquet")
        else:
            return None
        if inter is None:
            return None
        return {"inter": inter, "item": _sibling(directory, "items.csv", "items.parquet")}
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} or 'auto'")


def _find_amazon(
    directory: Path, chosen: Path | None, files: list[Path], path: Path
) -> dict[str, Path | None] | None:
    """A review JSON-lines file and the meta_* file of the same category beside it."""
    lcrec = (".inter.json", ".item.json")
    metas = [p for p in files if p.name.startswith("meta_") and _is_json(p.name)]
    reviews = [
        p
        for p in files
        if _is_json(p.name) and not p.name.startswith("meta_") and not p.name.endswith(lcrec)
    ]
    if chosen is not None:
        if not _is_json(chosen.name) or chosen.name.endswith(lcrec):
            return None
        if not chosen.name.startswith("meta_"):
            reviews = [chosen]
    elif not metas:
        return None  # a directory is only amazon-json with a meta file in it
    review = _unique(reviews, "review JSON", path)
    if review is None:
        return None
    matching = [m for m in metas if _amazon_key(m.name) == _amazon_key(review.name)]
    meta = _unique(matching, "meta_*.json", path) or _unique(metas, "meta_*.json", path)
    return {"inter": review, "item": meta}


_LOOKED_FOR = (
    "*.inter (recbole), *.inter.json + *.item.json (lcrec-json), ratings.dat (movielens-dat), "
    "u.data (movielens-100k), review *.json[.gz] + meta_*.json[.gz] (amazon-json), "
    "interactions.csv|parquet (generic)"
)


def detect_format(path: str | Path) -> str:
    """The format of the dataset at `path` (a directory, or one file of the dataset)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    for fmt in FORMATS:
        files = _find_files(fmt, path)
        if files is None:
            continue
        if fmt in ("lcrec-json", "amazon-json") and files.get("item") is None:
            continue  # these two are only recognised with their item file beside them
        return fmt
    directory = path if path.is_dir() else path.parent
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:20]) or "nothing"
    raise ValueError(
        f"cannot detect the dataset format of {path}: looked for {_LOOKED_FOR}; found {found}"
    )


# ----------------------------------------------------------------------------- assembly


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
