"""Load recommendation datasets from the formats users actually bring into one tidy shape.

Every loader returns the same `RawDataset`: an interaction table with string ids, float seconds
and a source-order tie-breaker, plus an item table with text for a sentence encoder. Malformed
rows are counted per reason in a `LoadReport` instead of crashing the load or vanishing silently.

One module per format, so the layout shows what is supported (see `detect_format` for the file
names each one is recognised by):

- `recbole`: ``recbole``, RecBole atomic files ``X.inter`` (+ ``X.item``).
- `lcrec`: ``lcrec-json``, ``X.inter.json`` + ``X.item.json``.
- `movielens`: ``movielens-dat`` (``ratings.dat`` + ``movies.dat``) and ``movielens-100k``
  (``u.data`` + ``u.item``).
- `amazon_json`: ``amazon-json``, Amazon review JSON lines + ``meta_*.json[.gz]``.
- `generic`: ``generic``, ``interactions.csv|parquet`` + ``items.csv|parquet``.

The shared pieces: `base` (the contract types, load report, malformed-row counting), `parsing`
(file, id, number, time and text helpers), `detect` (format detection) and `dispatch`
(`load_dataset`). Import from this package, not from the modules: they are its layout, not its API.
"""

from reaseq.offline.datasets.base import (
    EXAMPLE_CHARS,
    FORMATS,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ITEM_REASONS,
    MAX_EXAMPLES,
    LabelMode,
    LoadReport,
    RawDataset,
)
from reaseq.offline.datasets.detect import detect_format
from reaseq.offline.datasets.dispatch import load_dataset
from reaseq.offline.datasets.movielens import ML100K_GENRES

__all__ = [
    "EXAMPLE_CHARS",
    "FORMATS",
    "INTERACTION_COLUMNS",
    "ITEM_COLUMNS",
    "ITEM_REASONS",
    "MAX_EXAMPLES",
    "ML100K_GENRES",
    "LabelMode",
    "LoadReport",
    "RawDataset",
    "detect_format",
    "load_dataset",
]
