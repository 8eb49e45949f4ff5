"""The item representation interface: a named builder turns a prepared catalog into an [N, d]
matrix (row = item row), written to `<work>/reps/<kind>/item_reps.npy`.

Feature sets name it: `id+<kind>` trains the ranker on `[ID embedding ‖ representation]`.
v0 ships `text` (MiniLM + PCA); MAKR registers `makr` (and `hybrid`) here without touching the
ranker, export, publish or the service.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from reaseq.offline.prepare import Prepared
from reaseq.offline.text_reps import TextRepConfig, build_text_representation

Builder = Callable[[Prepared, Path, TextRepConfig], np.ndarray]


def _text(data: Prepared, out_dir: Path, cfg: TextRepConfig) -> np.ndarray:
    return build_text_representation(data.items["text"].fillna("").tolist(), out_dir, cfg)


BUILDERS: dict[str, Builder] = {"text": _text}


def representation_kind(features: str) -> str | None:
    """'id' -> None; 'id+<kind>' -> kind (checked against the registry)."""
    if features == "id":
        return None
    prefix, _, kind = features.partition("+")
    if prefix != "id" or kind not in BUILDERS:
        known = ", ".join(["id", *(f"id+{k}" for k in BUILDERS)])
        raise ValueError(f"unknown feature set {features!r}; known: {known}")
    return kind


def build_representation(kind: str, data: Prepared, work: Path, cfg: TextRepConfig) -> np.ndarray:
    return BUILDERS[kind](data, work / "reps" / kind, cfg)
