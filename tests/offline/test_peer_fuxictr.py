"""The FuxiCTR DIN peer trains on our synthetic samples through the adapter: predictions line up
with our test rows, are scored by our metrics, and the representation row really reads it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reaseq.offline import synthetic
from reaseq.offline.datasets import load_dataset
from reaseq.offline.metrics import ctr_metrics
from reaseq.offline.peers import PeerNotInstalled, PeerResult
from reaseq.offline.peers.fuxictr_din import DATASET_ID, train_fuxictr_din
from reaseq.offline.prepare import Prepared, prepare

EPOCHS = 2


def require_fuxictr() -> None:
    """Skip without fuxictr, unless REASEQ_REQUIRE_FUXICTR says it must be there (CI)."""
    if importlib.util.find_spec("fuxictr") is None:
        if os.environ.get("REASEQ_REQUIRE_FUXICTR"):
            pytest.fail("REASEQ_REQUIRE_FUXICTR is set but fuxictr is not installed")
        pytest.skip("fuxictr not installed (pip install -e '.[peers]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(load_dataset(synthetic.generate(tmp_path_factory.mktemp("raw"))))


@pytest.fixture(scope="module")
def category_reps(data: Prepared) -> np.ndarray:
    """A representation that carries the synthetic set's planted signal: the item's category."""
    codes = data.items["category"].astype("category").cat.codes.to_numpy()
    return np.eye(codes.max() + 1, dtype=np.float32)[codes]


@pytest.fixture(scope="module")
def id_run(data: Prepared, tmp_path_factory: pytest.TempPathFactory) -> PeerResult:
    require_fuxictr()
    return train_fuxictr_din(data, None, 0, tmp_path_factory.mktemp("id"), EPOCHS)


@pytest.fixture(scope="module")
def rep_run(
    data: Prepared, category_reps: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PeerResult, Path]:
    require_fuxictr()
    out = tmp_path_factory.mktemp("rep")
    return train_fuxictr_din(data, category_reps, 0, out, EPOCHS, features="id+category"), out


def test_predictions_line_up_with_our_samples_and_beat_chance(
    data: Prepared, id_run: PeerResult
) -> None:
    for split in ("val", "test"):
        rows = data.samples[data.samples["split"] == split]
        scores = id_run.predictions[split]
        assert scores.shape == (len(rows),)
        assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
        # scored by our metrics on our rows, in our order
        ours = ctr_metrics(rows["user_row"].to_numpy(), rows["label"].to_numpy(), scores)
        assert id_run.metrics[f"{split}_uncalibrated"] == ours
    # our ranker reaches test AUC 0.58 on this set with IDs in 2 epochs; the peer 0.62
    assert id_run.metrics["test"]["auc"] > 0.55
    assert id_run.features == "id" and id_run.config["fuxictr"] == "2.3.10"
    assert [row["epoch"] for row in id_run.history] == list(range(1, EPOCHS + 1))
    best = max(id_run.history, key=lambda row: row["val_auc"])
    assert id_run.best_epoch == best["epoch"]  # early stopping on validation AUC
    assert id_run.metrics["val"]["auc"] == pytest.approx(best["val_auc"])  # best weights kept


def test_representation_is_the_frozen_item_embedding(
    data: Prepared, category_reps: np.ndarray, rep_run: tuple[PeerResult, Path]
) -> None:
    from fuxictr.pytorch.layers.embeddings.pretrained_embedding import PretrainedEmbedding

    result, _ = rep_run
    layer = result.model.embedding_layer.embedding_layer.embedding_layers["item_id"]
    assert isinstance(layer, PretrainedEmbedding) and layer.pretrain_usage == "concat"
    table = layer.pretrain_embedding.weight
    assert not table.requires_grad
    # after training: row 1 + item_row is still exactly the given representation; 0 is padding
    np.testing.assert_array_equal(table[1 : data.n_items + 1].numpy(), category_reps)
    assert not table[0].any()


def test_representation_changes_what_the_peer_learns(
    id_run: PeerResult, rep_run: tuple[PeerResult, Path]
) -> None:
    result, out = rep_run
    assert result.features == "id+category" and result.config["representation_dim"] > 0
    # the category representation carries the planted signal: it must lift the peer clearly
    assert result.metrics["test"]["auc"] > id_run.metrics["test"]["auc"] + 0.05
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"]["test"] == result.metrics["test"]
    assert saved["config"]["pretrain_usage"] == "concat"
    np.testing.assert_array_equal(
        np.load(out / "predictions.npz")["test"], result.predictions["test"]
    )
    assert (out / "checkpoints" / DATASET_ID / "DIN.model").exists()


def test_missing_fuxictr_says_how_to_install(
    data: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fuxictr", None)  # `import fuxictr` now raises ImportError
    with pytest.raises(PeerNotInstalled, match=r"pip install fuxictr==2\.3\.10"):
        train_fuxictr_din(data, None, 0, tmp_path, EPOCHS)
    assert not any(tmp_path.iterdir())  # failed before writing anything


def test_bad_inputs_fail_before_training(data: Prepared, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_items"):
        train_fuxictr_din(data, np.zeros((data.n_items - 1, 4)), 0, tmp_path, EPOCHS)
    with pytest.raises(ValueError, match="non-finite"):
        train_fuxictr_din(data, np.full((data.n_items, 4), np.nan), 0, tmp_path, EPOCHS)
    with pytest.raises(ValueError, match="epochs"):
        train_fuxictr_din(data, None, 0, tmp_path, 0)


def test_importing_the_adapter_does_not_import_fuxictr() -> None:
    code = (
        "import sys, reaseq.offline.peers.fuxictr_din; "
        "assert not {'fuxictr', 'ray', 'model_zoo'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


def test_the_experiment_reports_both_fuxictr_rows(tmp_path: Path) -> None:
    """`reaseq experiment` gets the peer rows by registration: trained with the ranker's epoch
    budget, calibrated on validation, in the same report."""
    require_fuxictr()
    from dataclasses import replace

    from reaseq.offline.experiment import PEERS, run_experiment
    from reaseq.offline.peers.fuxictr_din import register_experiment_peers
    from tests.offline.test_experiment import tiny_config

    assert register_experiment_peers()
    try:
        cfg = tiny_config(tmp_path / "artifacts", tmp_path / "out")
        cfg = replace(cfg, variants=("fuxictr-din", "fuxictr-din+text"), seeds=(0,), comparisons=())
        result = run_experiment(cfg, log=lambda _msg: None)
    finally:
        PEERS.pop("fuxictr-din", None)
        PEERS.pop("fuxictr-din+text", None)
    assert not result.failed
    report = (result.out_dir / "report.md").read_text()
    assert "`fuxictr-din+text`" in report and "`fuxictr-din`" in report
    for variant in ("fuxictr-din", "fuxictr-din+text"):
        run = json.loads((result.out_dir / "runs" / variant / "seed0" / "result.json").read_text())
        assert 0.0 < run["test"]["auc"] < 1.0 and run["peer"] == variant, run
