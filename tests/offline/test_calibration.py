"""Calibration (DESIGN §3.4): fitted on validation only, monotone (AUC/GAUC unchanged), folded
into the exported model so that the served `scores` are calibrated probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from reaseq.core import contract
from reaseq.core.release import MODEL_FILE, read_manifest
from reaseq.models.ranker import Ranker, RankerConfig
from reaseq.offline.calibration import Calibration, fit_calibration, sigmoid
from reaseq.offline.datasets import load_dataset
from reaseq.offline.export import export_onnx, onnx_parity
from reaseq.offline.metrics import constant_logloss, ctr_metrics
from reaseq.offline.pipeline import RELIABILITY_FILE
from reaseq.offline.prepare import Prepared, prepare
from reaseq.offline.synthetic import generate
from reaseq.offline.train import (
    CHECKPOINT_FILE,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    set_calibration,
    train_ranker,
)


def overconfident(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, labels, logits): labels drawn from sigmoid(t), the model says 4 t (overconfident)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.5, size=n)
    labels = (rng.random(n) < sigmoid(truth)).astype(np.float64)
    return rng.integers(0, 50, size=n), labels, 4.0 * truth


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibration_fixes_overconfidence_without_changing_auc_or_gauc(method: str) -> None:
    users, labels, logits = overconfident(20_000)
    val, test = slice(0, 10_000), slice(10_000, None)
    cal = fit_calibration(logits[val], labels[val], method)
    assert cal.scale == pytest.approx(0.25, rel=0.1)  # undoes the factor 4
    before = ctr_metrics(users[test], labels[test], sigmoid(logits[test]))
    after = ctr_metrics(users[test], labels[test], cal.probabilities(logits[test]))
    constant = constant_logloss(labels[val], labels[test])
    assert before["logloss"] > constant > after["logloss"]
    assert after["auc"] == before["auc"] and after["gauc"] == before["gauc"]  # monotone


def test_platt_learns_a_shift_and_identity_when_asked() -> None:
    _, labels, logits = overconfident(10_000, seed=1)
    shifted = logits / 4.0 + 1.0  # calibrated logits, shifted by one
    cal = fit_calibration(shifted, labels, "platt")
    assert cal.scale == pytest.approx(1.0, abs=0.1) and cal.bias == pytest.approx(-1.0, abs=0.1)
    assert fit_calibration(shifted, labels, "none") == Calibration("none", 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown calibration"):
        fit_calibration(shifted, labels, "isotonic")  # type: ignore[arg-type]


def test_scale_stays_positive_so_the_order_is_kept() -> None:
    _, labels, logits = overconfident(2_000, seed=2)
    cal = fit_calibration(-logits, labels)  # an anti-correlated model: the MLE scale is < 0
    assert cal.scale > 0
    order = np.argsort(logits, kind="stable")
    np.testing.assert_array_equal(np.argsort(cal.apply(logits), kind="stable"), order)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(load_dataset(generate(tmp_path_factory.mktemp("syn"), n_users=120)))


def quick_cfg() -> TrainConfig:
    cfg = TrainConfig(features="id", epochs=2, batch_size=256)
    cfg.ranker.max_behaviors = 10
    return cfg


def test_calibration_sees_validation_only(synthetic: Prepared) -> None:
    """Leakage guard: other test labels, same fitted calibration (and same weights)."""
    first = train_ranker(synthetic, None, quick_cfg())
    samples = synthetic.samples.copy()
    test = samples["split"] == "test"
    samples.loc[test, "label"] = 1.0 - samples.loc[test, "label"]
    flipped = train_ranker(dataclasses.replace(synthetic, samples=samples), None, quick_cfg())
    assert flipped.metrics["test"]["auc"] == pytest.approx(1 - first.metrics["test"]["auc"])
    assert flipped.calibration == first.calibration
    assert first.calibration.method == "platt" and first.calibration.scale != 1.0
    # changing validation labels does change it: the check above can fail
    samples = synthetic.samples.copy()
    val = samples["split"] == "val"
    samples.loc[val, "label"] = 1.0 - samples.loc[val, "label"]
    other_val = train_ranker(dataclasses.replace(synthetic, samples=samples), None, quick_cfg())
    assert other_val.calibration != first.calibration


def test_training_folds_calibration_into_the_model_and_checkpoint(
    synthetic: Prepared, tmp_path
) -> None:
    cfg = quick_cfg()
    result = train_ranker(synthetic, None, cfg)
    cal = result.calibration
    assert result.model.scorer.calibration.tolist() == pytest.approx([cal.scale, cal.bias])
    for split in ("val", "test"):  # same order, so same AUC and GAUC
        for metric in ("auc", "gauc"):
            calibrated = result.metrics[split][metric]
            assert calibrated == pytest.approx(result.metrics[f"{split}_uncalibrated"][metric])
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(result, cfg, path)
    model, ckpt = load_checkpoint(path)
    assert ckpt["calibration"] == cal.to_dict()
    assert model.scorer.calibration.tolist() == pytest.approx([cal.scale, cal.bias])


def test_checkpoint_without_calibration_loads_as_identity(synthetic: Prepared, tmp_path) -> None:
    cfg = quick_cfg()
    cfg.epochs = 1
    result = train_ranker(synthetic, None, cfg)
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(result, cfg, path)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["state_dict"]["scorer.calibration"]  # written before calibration existed
    torch.save(ckpt, path)
    model, _ = load_checkpoint(path)
    assert model.scorer.calibration.tolist() == [1.0, 0.0]


def test_exported_onnx_scores_are_calibrated_probabilities() -> None:
    torch.manual_seed(0)
    model = Ranker(RankerConfig(n_items=20))
    set_calibration(model, Calibration("platt", 0.3, -0.7))
    dim = model.cfg.item_dim
    onnx_bytes = export_onnx(model.scorer, dim)
    assert onnx_parity(model.scorer, onnx_bytes, dim) < 1e-5
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    cand = rng.normal(size=(2, 4, dim)).astype(np.float32)
    beh = rng.normal(size=(2, 6, dim)).astype(np.float32)
    mask = np.ones((2, 6), np.float32)
    gaps = rng.integers(0, contract.N_GAP_BUCKETS, size=(2, 6))
    generated = (rng.random((2, 6)) > 0.5).astype(np.float32)
    feeds = {contract.CANDIDATES: cand, contract.BEHAVIORS: beh, contract.BEHAVIOR_MASK: mask}
    feeds |= {contract.BEHAVIOR_GAP_BUCKETS: gaps, contract.BEHAVIOR_GENERATED: generated}
    (scores,) = session.run([contract.SCORES], feeds)
    with torch.no_grad():
        inputs = (cand, beh, mask, gaps, generated)
        raw = model.scorer.logits(*(torch.from_numpy(x) for x in inputs)).numpy()
    np.testing.assert_allclose(scores, sigmoid(0.3 * raw - 0.7), atol=1e-5)
    assert not np.allclose(scores, sigmoid(raw), atol=1e-3)  # the calibration is really in it


def test_pipeline_reports_and_exports_the_calibration(pipeline_run) -> None:
    report = pipeline_run.report
    constant = report["constant_predictor"]
    assert constant["train_positive_rate"] == 0.5  # implicit: one negative per positive
    assert constant["test_logloss"] == pytest.approx(np.log(2))
    for r in report["results"].values():
        assert r["test"]["logloss"] < constant["test_logloss"]
        assert r["test"]["gauc"] == pytest.approx(r["test_uncalibrated"]["gauc"], abs=1e-12)
        assert r["test"]["auc"] == pytest.approx(r["test_uncalibrated"]["auc"], abs=1e-12)
    png = pipeline_run.work_dir / RELIABILITY_FILE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = read_manifest(pipeline_run.release_dir)
    cal = report["results"]["id+text"]["calibration"]
    assert manifest.metrics["calibration_scale"] == pytest.approx(cal["scale"])
    assert manifest.metrics["calibration_bias"] == pytest.approx(cal["bias"])
    assert manifest.metrics["test_logloss"] == report["results"]["id+text"]["test"]["logloss"]
    assert (pipeline_run.release_dir / MODEL_FILE).exists()


def test_unknown_method_fails_before_training(synthetic: Prepared) -> None:
    cfg = quick_cfg()
    cfg.calibration = "isotonic"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="known: platt, temperature, none"):
        train_ranker(synthetic, None, cfg, on_batch=lambda *_: pytest.fail("trained anyway"))
