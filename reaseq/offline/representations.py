"""The item representation interface: a named builder turns a prepared catalog into an [N, d]
matrix (row = item row), written to `<work>/reps/<kind>/item_reps.npy`.

Feature sets name it: `id+<kind>` trains the ranker on `[ID embedding ‖ representation]`.
`text` is MiniLM + PCA over the raw item text; `makr` and `hybrid` encode the MAKR knowledge
(offline/makr/encode.py) and need nothing changed in the ranker, export, publish or the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from reaseq.offline.prepare import Prepared
from reaseq.offline.text_reps import TextRepConfig, build_text_representation

Builder = Callable[..., np.ndarray]  # (data, out_dir, text cfg, **options) -> [N, d]


def _text(data: Prepared, out_dir: Path, cfg: TextRepConfig, **_: object) -> np.ndarray:
    return build_text_representation(data.items["text"].fillna("").tolist(), out_dir, cfg)


def _makr(kind: str) -> Builder:
    def build(data: Prepared, out_dir: Path, cfg: TextRepConfig, makr=None) -> np.ndarray:
        from reaseq.offline.makr.encode import encode
        from reaseq.offline.makr.job import ensure_knowledge

        # out_dir = <work>/reps/<kind>: the knowledge lives under <work>/makr/<model>
        records = ensure_knowledge(data, out_dir.parent.parent, makr)
        encoding = replace(makr.encode, dim=cfg.dim) if makr else None
        return encode(kind, data, records, out_dir, cfg, encoding).reps

    return build


BUILDERS: dict[str, Builder] = {"text": _text, "makr": _makr("makr"), "hybrid": _makr("hybrid")}


GBR_SUFFIX = "+gbr"


def representation_kind(features: str) -> str | None:
    """'id' -> None; 'id+<kind>' or 'id+<kind>+gbr' -> kind (checked against the registry)."""
    if features == "id":
        return None
    prefix, _, kind = features.removesuffix(GBR_SUFFIX).partition("+")
    if prefix != "id" or kind not in BUILDERS:
        known = ", ".join(["id", *(f"id+{k}" for k in BUILDERS), "id+<kind>+gbr"])
        raise ValueError(f"unknown feature set {features!r}; known: {known}")
    return kind


def uses_gbr(features: str) -> bool:
    """'id+<kind>+gbr': the ranker attends over GBR-filled histories (DESIGN §3.3)."""
    if features.endswith(GBR_SUFFIX) and representation_kind(features) is None:
        raise ValueError("GBR fills behaviors with representations: use id+<kind>+gbr")
    return features.endswith(GBR_SUFFIX)


def build_representation(
    kind: str, data: Prepared, work: Path, cfg: TextRepConfig, **options: object
) -> np.ndarray:
    """`options` go to the builder (e.g. `makr=MakrConfig(...)` for the MAKR kinds)."""
    return BUILDERS[kind](data, work / "reps" / kind, cfg, **options)
