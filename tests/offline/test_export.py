"""Export: ONNX Runtime agrees with PyTorch, and a release folder is complete and consistent."""

import numpy as np
import onnxruntime as ort
import torch

from reaseq.core import contract
from reaseq.core.release import MODEL_FILE, Snapshot, read_manifest, verify_release_files
from reaseq.offline.export import onnx_parity
from reaseq.offline.pipeline import load_prepared
from reaseq.offline.train import CHECKPOINT_FILE, load_checkpoint


def test_onnx_matches_pytorch(pipeline_run) -> None:
    model, _ = load_checkpoint(pipeline_run.work_dir / "models" / "id+text" / CHECKPOINT_FILE)
    onnx_bytes = (pipeline_run.release_dir / MODEL_FILE).read_bytes()
    diff = onnx_parity(model.scorer, onnx_bytes, model.cfg.item_dim, seed=3)
    print(f"ONNX Runtime vs PyTorch max abs diff: {diff:.2e}")
    assert diff < 1e-5
    assert read_manifest(pipeline_run.release_dir).metrics["onnx_parity_max_abs_diff"] < 1e-5


def test_release_reproduces_the_trained_model_on_real_samples(pipeline_run) -> None:
    """Published vectors (float16) + ONNX give the PyTorch model's scores on test samples."""
    model, _ = load_checkpoint(pipeline_run.work_dir / "models" / "id+text" / CHECKPOINT_FILE)
    data = load_prepared(pipeline_run.work_dir)
    release = pipeline_run.release_dir
    verify_release_files(release, read_manifest(release))
    snap = Snapshot.open(release)
    test = data.samples[data.samples["split"] == "test"].head(50)
    hist = data.histories(test, model.cfg.max_behaviors, pad=data.n_items)
    with torch.no_grad():
        ref = model(
            torch.from_numpy(test["item_row"].to_numpy()[:, None].copy()), torch.from_numpy(hist)
        )["y_pred"][:, 0].numpy()
    session = ort.InferenceSession((release / MODEL_FILE).read_bytes())
    vectors = np.concatenate([snap.item_vectors, np.zeros((1, snap.dim), np.float16)])
    feeds = {
        contract.CANDIDATES: vectors[test["item_row"].to_numpy()][:, None].astype(np.float32),
        contract.BEHAVIORS: vectors[hist].astype(np.float32),
        contract.BEHAVIOR_MASK: (hist != data.n_items).astype(np.float32),
    }
    (served,) = session.run([contract.SCORES], feeds)
    diff = np.abs(served[:, 0] - ref).max()
    print(f"served (float16 vectors) vs PyTorch max abs diff: {diff:.2e}")
    assert diff < 5e-3


def test_snapshot_matches_manifest(pipeline_run) -> None:
    manifest = read_manifest(pipeline_run.release_dir)
    snap = Snapshot.open(pipeline_run.release_dir)
    snap.check_against(manifest)
    assert manifest.n_items == len(load_prepared(pipeline_run.work_dir).items)
    lengths = np.diff(snap.user_offsets)
    assert lengths.max() <= manifest.max_behaviors
