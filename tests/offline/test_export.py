"""Export: ONNX Runtime agrees with PyTorch, and a release folder is complete and consistent."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from reaseq.core import contract
from reaseq.core.release import MODEL_FILE, Snapshot, read_manifest, verify_release_files
from reaseq.offline.export import onnx_parity
from reaseq.offline.pipeline import load_prepared
from reaseq.offline.train import CHECKPOINT_FILE, PlainHistories, load_checkpoint


def test_onnx_matches_pytorch(pipeline_run) -> None:
    model, _ = load_checkpoint(pipeline_run.work_dir / "models" / "id+text" / CHECKPOINT_FILE)
    onnx_bytes = (pipeline_run.release_dir / MODEL_FILE).read_bytes()
    diff = onnx_parity(model.scorer, onnx_bytes, model.cfg.item_dim, seed=3)
    print(f"ONNX Runtime vs PyTorch max abs diff: {diff:.2e}")
    assert diff < 1e-5
    assert read_manifest(pipeline_run.release_dir).metrics["onnx_parity_max_abs_diff"] < 1e-5


def release_vs_pytorch(model, data, release: Path, histories) -> float:
    """Max |ONNX on published float16 vectors - PyTorch| over 50 test samples' scores, with the
    behavior side (gap buckets, generated flags) fed as the service feeds it."""
    verify_release_files(release, read_manifest(release))
    snap = Snapshot.open(release)
    test = data.samples[data.samples["split"] == "test"].head(50)
    rows, gaps = histories.for_samples(test, model.cfg.max_behaviors)
    cand = torch.from_numpy(test["item_row"].to_numpy()[:, None].copy())
    with torch.no_grad():
        ref = model(cand, torch.from_numpy(rows), torch.from_numpy(gaps.astype(np.int64)))
        latents = torch.from_numpy(np.asarray(histories.generated, np.float32))
        generated = model.items.generated_vectors(latents).numpy() if len(latents) else None
    table = [snap.item_vectors, np.zeros((1, snap.dim), np.float16)]
    if generated is not None:
        table.append(generated.astype(np.float16))
    vectors = np.concatenate(table)
    feeds = {
        contract.CANDIDATES: vectors[test["item_row"].to_numpy()][:, None].astype(np.float32),
        contract.BEHAVIORS: vectors[rows].astype(np.float32),
        contract.BEHAVIOR_MASK: (rows != data.n_items).astype(np.float32),
        contract.BEHAVIOR_GAP_BUCKETS: gaps.astype(np.int64),
        contract.BEHAVIOR_GENERATED: (rows > data.n_items).astype(np.float32),
    }
    session = ort.InferenceSession((release / MODEL_FILE).read_bytes())
    (served,) = session.run([contract.SCORES], feeds)
    return float(np.abs(served[:, 0] - ref["y_pred"][:, 0].numpy()).max())


def test_release_reproduces_the_trained_model_on_real_samples(pipeline_run) -> None:
    """Published vectors (float16) + ONNX give the PyTorch model's scores on test samples."""
    model, _ = load_checkpoint(pipeline_run.work_dir / "models" / "id+text" / CHECKPOINT_FILE)
    data = load_prepared(pipeline_run.work_dir)
    diff = release_vs_pytorch(model, data, pipeline_run.release_dir, PlainHistories(data))
    print(f"served (float16 vectors) vs PyTorch max abs diff: {diff:.2e}")
    assert diff < 5e-3


def test_snapshot_matches_manifest(pipeline_run) -> None:
    manifest = read_manifest(pipeline_run.release_dir)
    snap = Snapshot.open(pipeline_run.release_dir)
    snap.check_against(manifest)
    assert manifest.n_items == len(load_prepared(pipeline_run.work_dir).items)
    lengths = np.diff(snap.user_offsets)
    assert lengths.max() <= manifest.max_behaviors
