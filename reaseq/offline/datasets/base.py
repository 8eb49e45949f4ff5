"""The shape every loader returns, and the bookkeeping that keeps dropped rows visible.

Malformed rows are counted per reason in a `LoadReport` (with a few raw examples) instead of
crashing the load or vanishing silently, so a user can see what their file lost and why. Each bad
row is counted once, under the first check it fails (`_Rows`), so interaction reasons add up to
`rows_read - rows_kept`; item-table reasons (see `ITEM_REASONS`) never drop interactions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


MAX_EXAMPLES = 3


EXAMPLE_CHARS = 200


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
