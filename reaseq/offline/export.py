"""Job `export`: a trained ranker -> a release folder (ONNX scoring model + feature snapshot).

The scoring network goes to ONNX with dynamic batch, candidate and behavior axes; the item tower
is evaluated once per catalog item and published as float16 vectors, together with each user's
most recent behaviors as vectors. Parity with PyTorch is checked before anything is written.
The calibration fitted on validation is a buffer of the scoring network, so the exported `scores`
are calibrated probabilities; the manifest's metrics record its scale and bias.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch

from reaseq.core import contract
from reaseq.core.codec import VECTOR_DTYPE
from reaseq.core.release import (
    DEFAULT_ITEM_VECTOR,
    ITEM_IDS,
    ITEM_KNOWLEDGE,
    ITEM_VECTORS,
    MANIFEST_FILE,
    MAX_KNOWLEDGE_CHARS,
    MODEL_FILE,
    USER_BEHAVIORS,
    USER_GAP_BUCKETS,
    USER_GENERATED,
    USER_IDS,
    USER_OFFSETS,
    ReleaseManifest,
    code_version,
    combine_hashes,
    sha256_bytes,
    sha256_file,
    snapshot_files,
)
from reaseq.models.ranker import Ranker, ScoringNet
from reaseq.offline.prepare import Prepared
from reaseq.offline.train import Histories, PlainHistories

OPSET = 17


def _inputs(scorer: ScoringNet) -> tuple[str, ...]:
    side = contract.SIDE_INPUT_NAMES if scorer.behavior_side else ()
    return (*contract.INPUT_NAMES, *side)


class _Explained(torch.nn.Module):
    """The scorer with its attention weights as a second output (explanations)."""

    def __init__(self, scorer: ScoringNet) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer.explained(*inputs)


def export_onnx(scorer: ScoringNet, dim: int) -> bytes:
    """ONNX bytes of the scoring network; B, C and L are dynamic. A net with a behavior side
    also takes each behavior's gap bucket and generated flag (value format 2). Outputs: scores
    and the attention weights (contract.ATTENTION) that explanations read."""
    scorer.eval()
    example: tuple[torch.Tensor, ...] = (
        torch.randn(2, 3, dim),
        torch.randn(2, 5, dim),
        torch.ones(2, 5),
    )
    behaviors_axes = {0: "batch", 1: "behaviors"}
    side_axes = {}
    if scorer.behavior_side:
        example += (torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5))
        side_axes = dict.fromkeys(contract.SIDE_INPUT_NAMES, behaviors_axes)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Explained(scorer).eval(),  # export restores the wrapper's mode onto the scorer
            example,
            buffer,
            input_names=list(_inputs(scorer)),
            output_names=[contract.SCORES, contract.ATTENTION],
            dynamic_axes={
                contract.CANDIDATES: {0: "batch", 1: "candidates"},
                contract.BEHAVIORS: {0: "batch", 1: "behaviors"},
                contract.BEHAVIOR_MASK: {0: "batch", 1: "behaviors"},
                contract.SCORES: {0: "batch", 1: "candidates"},
                contract.ATTENTION: {0: "batch", 1: "candidates", 2: "behaviors"},
            }
            | side_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def onnx_parity(scorer: ScoringNet, onnx_bytes: bytes, dim: int, seed: int = 0) -> float:
    """Max |ONNX Runtime - PyTorch| over random inputs of several shapes, empty history included."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b, c, length, empty in [(1, 200, 100, False), (3, 7, 13, False), (2, 5, 4, True)]:
        cand = rng.normal(size=(b, c, dim)).astype(np.float32)
        beh = rng.normal(size=(b, length, dim)).astype(np.float32)
        mask = (rng.random((b, length)) > 0.3).astype(np.float32)
        if empty:
            mask[0] = 0
        feeds = {contract.CANDIDATES: cand, contract.BEHAVIORS: beh, contract.BEHAVIOR_MASK: mask}
        if scorer.behavior_side:
            gaps = rng.integers(0, contract.N_GAP_BUCKETS, size=(b, length))
            generated = (rng.random((b, length)) > 0.7).astype(np.float32)
            feeds |= {contract.BEHAVIOR_GAP_BUCKETS: gaps, contract.BEHAVIOR_GENERATED: generated}
        ort_scores, ort_attention = session.run([contract.SCORES, contract.ATTENTION], feeds)
        with torch.no_grad():
            inputs = (torch.from_numpy(feeds[name]) for name in _inputs(scorer))
            scores, attention = scorer.explained(*inputs)
        worst = max(
            worst,
            float(np.abs(ort_scores - scores.numpy()).max()),
            float(np.abs(ort_attention - attention.numpy()).max()),
        )
    return worst


def calibration_metrics(model: Ranker) -> dict[str, float]:
    """The calibration folded into the exported model, for the manifest."""
    scale, bias = (float(v) for v in model.scorer.calibration)
    return {"calibration_scale": scale, "calibration_bias": bias}


@dataclass
class ServedBehaviors:
    """What the release publishes per user, CSR over the users' served sequences."""

    offsets: np.ndarray  # int64 [U + 1]
    vectors: np.ndarray  # float16 [T, D]
    gap_buckets: np.ndarray  # uint8 [T]
    generated: np.ndarray  # uint8 [T]


def served_behaviors(
    model: Ranker,
    data: Prepared,
    item_vectors: np.ndarray,
    histories: Histories | None = None,
) -> ServedBehaviors:
    """Each user's whole log as the ranker reads it (the last max_behaviors positions, GBR
    slots included when `histories` are filled ones), as vectors with buckets and flags."""
    histories = histories or PlainHistories(data)
    max_len, n = model.cfg.max_behaviors, data.n_items
    users = pd.DataFrame(
        {"user_row": np.arange(len(data.user_ids)), "hist_end": np.diff(data.beh_offsets)}
    )
    rows, gaps = histories.for_samples(users, max_len)
    keep = rows != n  # right-aligned: padding first, then the sequence
    lengths = keep.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat_rows, flat_gaps = rows[keep], gaps[keep]
    generated = flat_rows > n
    vectors = np.zeros((len(flat_rows), item_vectors.shape[1]), dtype=VECTOR_DTYPE)
    vectors[~generated] = item_vectors[flat_rows[~generated]]
    if generated.any():
        latents = torch.from_numpy(np.asarray(histories.generated)[flat_rows[generated] - n - 1])
        vectors[generated] = model.items.generated_vectors(latents).numpy().astype(VECTOR_DTYPE)
    return ServedBehaviors(offsets, vectors, flat_gaps.astype(np.uint8), generated.astype(np.uint8))


def user_value_sizes(offsets: np.ndarray, dim: int, value_format: int) -> dict[str, float]:
    """Bytes of the published user values (codec: 8-byte header, float16 vectors, and one gap
    bucket and one flag byte per behavior in format 2): what one request reads for its user."""
    lengths = np.diff(offsets)
    per_behavior = 2 * dim + (2 if value_format == 2 else 0)
    sizes = 8 + lengths * per_behavior
    return {
        "user_value_bytes_mean": float(sizes.mean()) if len(sizes) else 0.0,
        "user_value_bytes_max": float(sizes.max()) if len(sizes) else 0.0,
    }


def knowledge_texts(item_ids: np.ndarray, knowledge: dict[str, str]) -> np.ndarray | None:
    """Per item its knowledge text, valid UTF-8 and cut at a word to MAX_KNOWLEDGE_CHARS; None
    when no item has any (the release then carries no knowledge file)."""
    texts = []
    for item_id in item_ids.tolist():
        text = knowledge.get(item_id, "").encode("utf-8", "replace").decode().strip()
        if len(text) > MAX_KNOWLEDGE_CHARS:
            text = text[: MAX_KNOWLEDGE_CHARS - 1].rsplit(" ", 1)[0] + "…"
        texts.append(text)
    return np.array(texts, dtype=str) if any(texts) else None


def export_release(
    model: Ranker,
    data: Prepared,
    out_root: Path,
    features: str,
    metrics: dict[str, float],
    release: str | None = None,
    parity_tolerance: float = 1e-4,
    histories: Histories | None = None,
    knowledge: dict[str, str] | None = None,
) -> Path:
    """Write a complete release folder under out_root; returns its path. `histories` are what
    the model was trained on (GBR-filled ones publish the generated behaviors too); `knowledge`
    (item id -> MAKR knowledge text) is published for explanations."""
    cfg = model.cfg
    dim = cfg.item_dim
    onnx_bytes = export_onnx(model.scorer, dim)
    diff = onnx_parity(model.scorer, onnx_bytes, dim)
    if diff > parity_tolerance:
        raise RuntimeError(f"ONNX/PyTorch parity failed: max abs diff {diff:.2e}")

    item_vectors = model.items.all_vectors().numpy().astype(VECTOR_DTYPE)
    default_vector = item_vectors.astype(np.float32).mean(axis=0).astype(VECTOR_DTYPE)
    served = served_behaviors(model, data, item_vectors, histories)
    value_format = 2 if cfg.behavior_side else 1

    now = dt.datetime.now(dt.UTC)
    model_sha = sha256_bytes(onnx_bytes)
    tag = features.replace("+", "-")
    release = release or f"{data.name}-{tag}-{now:%Y%m%d%H%M%S}-{model_sha[:8]}"
    folder = out_root / release
    (folder / "features").mkdir(parents=True, exist_ok=False)
    (folder / MODEL_FILE).write_bytes(onnx_bytes)
    arrays = {
        ITEM_IDS: data.items["item_id"].to_numpy().astype(str),
        ITEM_VECTORS: item_vectors,
        DEFAULT_ITEM_VECTOR: default_vector,
        USER_IDS: data.user_ids.astype(str),
        USER_OFFSETS: served.offsets,
        USER_BEHAVIORS: served.vectors,
    }
    if value_format == 2:
        arrays |= {USER_GAP_BUCKETS: served.gap_buckets, USER_GENERATED: served.generated}
    texts = knowledge_texts(arrays[ITEM_IDS], knowledge or {})
    if texts is not None:
        arrays[ITEM_KNOWLEDGE] = texts
    for name, array in arrays.items():
        np.save(folder / name, array, allow_pickle=False)
    names = snapshot_files(value_format)
    files = {MODEL_FILE: model_sha} | {name: sha256_file(folder / name) for name in arrays}
    snapshot_sha = combine_hashes([files[name] for name in names])
    manifest = ReleaseManifest(
        release=release,
        created_at=now.isoformat(timespec="microseconds"),
        model_version=f"{data.name}-{features}-{model_sha[:12]}",
        feature_version=f"{data.name}-{snapshot_sha[:12]}",
        vector_dim=dim,
        value_format=value_format,
        max_behaviors=cfg.max_behaviors,
        n_items=len(item_vectors),
        n_users=len(data.user_ids),
        n_behaviors=len(served.vectors),
        n_knowledge=0 if texts is None else int(np.count_nonzero(texts)),
        model_sha256=model_sha,
        snapshot_sha256=snapshot_sha,
        files=files,
        code_version=code_version(),
        dataset=data.name,
        features=features,
        metrics=metrics
        | {"onnx_parity_max_abs_diff": diff, "generated_behaviors": int(served.generated.sum())}
        | user_value_sizes(served.offsets, dim, value_format)
        | calibration_metrics(model),
        ranker_config=json.loads(json.dumps(cfg.to_dict())),
    )
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return folder
