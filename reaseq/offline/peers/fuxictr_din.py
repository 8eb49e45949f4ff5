"""Peer: the DIN of the FuxiCTR library (PyPI `fuxictr==2.3.10`, `model_zoo.LongCTR.DIN` with its
`LongCTRDataLoader`), trained on our prepared samples through an adapter, scored by our metrics.

FuxiCTR is used as a library, its documented way: a `FeatureProcessor` built from feature specs
writes the feature map and vocabulary (`rebuild_dataset=False`: our ids are already dense), the
LongCTR parquet layout carries the data, `RankDataLoader` + `LongCTRDataLoader` feed it, and the
model's own `fit` / `predict` train and score it. Nothing is downloaded at run time.

Identical to our ranker (reaseq.offline.train):
- the samples: every train / val / test row of `Prepared.samples`, same labels; predictions come
  back row for row in `samples[split == s]` order and are scored by `metrics.ctr_metrics`;
- the behavior history: the user's logged items before the sample (`hist_end`), the most recent
  `max_len` (100) of them, target item and behaviors sharing one item-id vocabulary;
- the representation ("IDs + same representation" rows): the very [N_items, d] matrix our ranker
  reads, as a frozen pretrained embedding of the item-id feature (`pretrained_emb`,
  `freeze_emb: True`), combined with a learned ID embedding (`pretrain_usage: concat`, the
  counterpart of our `[ID ‖ adapted representation]` item vector);
- early stopping on validation AUC only, patience 2, best weights restored; Platt calibration
  fitted on validation only (AUC / GAUC are those of the uncalibrated scores); batch size 512,
  Adam at 1e-3.

Different, FuxiCTR's own choices (its LongCTR `DIN_default` config template): embedding width 64
for every feature (ours: ID 32 + representation 64), DIN attention MLP [64] with Dice, a
[500, 500, 500] ReLU prediction MLP over [user, target, pooled interest], no dropout; a user-id
feature (our ranker has none); the learning rate divided by 10 after each epoch without a
validation gain (FuxiCTR's `reduce_lr_on_plateau`); weights initialised by FuxiCTR.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from reaseq.offline.calibration import Method, check_method, fit_calibration
from reaseq.offline.metrics import ctr_metrics
from reaseq.offline.peers import PeerNotInstalled, PeerResult
from reaseq.offline.prepare import SPLITS, Prepared

PEER = "fuxictr-din"
FUXICTR_VERSION = "2.3.10"
INSTALL_HINT = (
    f"the FuxiCTR DIN peer needs the fuxictr package: pip install fuxictr=={FUXICTR_VERSION} "
    "(or the project's `peers` extra: pip install -e '.[peers]')"
)
DATASET_ID = "longctr"  # FuxiCTR's folder name under data/ and checkpoints/
_SPLIT_FILE = {"train": "train", "val": "valid", "test": "test"}  # FuxiCTR's split names


@dataclass
class FuxiDinConfig:
    """Model values from FuxiCTR's LongCTR `DIN_default` template; batch size, history length and
    patience are ours so the protocol matches our ranker's."""

    embedding_dim: int = 64  # every feature's embedding width (template)
    dnn_hidden_units: tuple[int, ...] = (500, 500, 500)  # prediction MLP (template)
    dnn_activations: str = "relu"  # (template)
    attention_hidden_units: tuple[int, ...] = (64,)  # DIN activation unit (template)
    attention_hidden_activations: str = "Dice"  # (template)
    din_use_softmax: bool = False  # DIN: weighted sum, no softmax (template)
    learning_rate: float = 1e-3  # (template and ours)
    batch_size: int = 512  # ours (template: 8192)
    max_len: int = 100  # behaviors kept, most recent: our ranker's max_behaviors (template: 50)
    early_stop_patience: int = 2  # epochs without validation AUC gain (template and ours)
    reduce_lr_on_plateau: bool = True  # FuxiCTR default: lr / 10 after an epoch without gain
    pretrain_usage: str = "concat"  # how the frozen representation meets the learned ID vector
    calibration: Method = "platt"  # fitted on validation after training, as for our ranker
    threads: int = 2  # torch CPU threads (ours)
    gpu: int = -1  # FuxiCTR device index; -1: CPU


def _fuxictr() -> SimpleNamespace:
    """The FuxiCTR parts the adapter uses, imported on first use (they pull in Ray)."""
    try:
        import fuxictr
        from fuxictr.features import FeatureMap
        from fuxictr.preprocess import FeatureProcessor, build_dataset
        from fuxictr.pytorch.dataloaders import RankDataLoader
        from fuxictr.pytorch.layers.embeddings.pretrained_embedding import PretrainedEmbedding
        from fuxictr.pytorch.torch_utils import seed_everything
        from model_zoo.LongCTR.DIN import DIN
        from model_zoo.LongCTR.longctr_dataloader import LongCTRDataLoader
    except ImportError as exc:
        raise PeerNotInstalled(f"{INSTALL_HINT} ({exc})") from exc

    class RecordingDIN(DIN):
        """FuxiCTR's DIN, noting each validation AUC and the epoch whose weights it keeps."""

        def checkpoint_and_earlystop(self, logs: dict, min_delta: float = 1e-6) -> None:
            super().checkpoint_and_earlystop(logs, min_delta)
            epoch = self._epoch_index + 1
            self.epoch_log.append({"epoch": epoch, "val_auc": float(logs["AUC"])})
            if self._stopping_steps == 0:  # FuxiCTR just saved these weights as the best
                self.best_epoch = epoch

    return SimpleNamespace(
        version=fuxictr.__version__,
        FeatureMap=FeatureMap,
        FeatureProcessor=FeatureProcessor,
        build_dataset=build_dataset,
        RankDataLoader=RankDataLoader,
        PretrainedEmbedding=PretrainedEmbedding,
        seed_everything=seed_everything,
        DIN=RecordingDIN,
        LongCTRDataLoader=LongCTRDataLoader,
    )


def _check_inputs(data: Prepared, item_reps: np.ndarray | None, epochs: int) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    labels = data.samples["label"].to_numpy()
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("the FuxiCTR DIN peer trains on binary labels; samples have others")
    for split in SPLITS:
        if not (data.samples["split"] == split).any():
            raise ValueError(f"the prepared data has no {split!r} samples")
    if item_reps is not None:
        if item_reps.ndim != 2 or item_reps.shape[0] != data.n_items:
            raise ValueError(
                f"item representation must be [n_items={data.n_items}, d], got {item_reps.shape}"
            )
        if not np.isfinite(item_reps).all():
            raise ValueError("item representation has non-finite values")


def write_longctr_data(data: Prepared, data_dir: Path) -> dict[str, Path]:
    """Our samples in FuxiCTR's LongCTR layout; ids shift by one (0 is FuxiCTR's padding).

    <split>.parquet: user_index, item_index, seq_len, user_id, label per sample (row order kept);
    user_info.parquet: full_item_seq per user row (the behavior log, oldest first; a sample sees
    its first seq_len = hist_end items); item_info.parquet: item_id per item_index."""
    data_dir.mkdir(parents=True, exist_ok=True)
    offsets = data.beh_offsets
    behaviors = data.beh_items.astype(np.int64) + 1
    seqs = [behaviors[offsets[u] : offsets[u + 1]] for u in range(len(offsets) - 1)]
    paths = {
        "user_info": data_dir / "user_info.parquet",
        "item_info": data_dir / "item_info.parquet",
    }
    pd.DataFrame({"full_item_seq": seqs}).to_parquet(paths["user_info"], index=False)
    ids = np.arange(data.n_items + 1, dtype=np.int64)  # row 0: padding
    pd.DataFrame({"item_index": ids, "item_id": ids}).to_parquet(paths["item_info"], index=False)
    for split in SPLITS:
        s = data.samples[data.samples["split"] == split]
        users = s["user_row"].to_numpy(np.int64)
        frame = pd.DataFrame(
            {
                "user_index": users,
                "item_index": s["item_row"].to_numpy(np.int64) + 1,
                "seq_len": s["hist_end"].to_numpy(np.int64),
                "user_id": users + 1,
                # int, not float: LongCTRDataLoader stacks all columns into one array and indexes
                # user_info / item_info with them
                "label": s["label"].to_numpy().astype(np.int64),
            }
        )
        paths[split] = data_dir / f"{_SPLIT_FILE[split]}.parquet"
        frame.to_parquet(paths[split], index=False)
    return paths


def _feature_cols(data: Prepared, reps_file: Path | None, reps_dim: int, usage: str) -> list[dict]:
    """FuxiCTR feature specs. vocab_size = ids + padding 0 + FuxiCTR's OOV slot."""
    item_id = {
        "name": "item_id",
        "active": True,
        "dtype": "int",
        "type": "categorical",
        "source": "item",  # DIN embeds item-source features for the target and each behavior
        "vocab_size": data.n_items + 2,
    }
    if reps_file is not None:
        item_id |= {
            "pretrained_emb": str(reps_file),
            "pretrain_dim": reps_dim,
            "freeze_emb": True,
            "pretrain_usage": usage,
        }
    return [
        {
            "name": ["user_index", "item_index", "seq_len"],
            "active": True,
            "dtype": "int",
            "type": "meta",  # read by LongCTRDataLoader, not embedded
            "remap": False,
        },
        {
            "name": "user_id",
            "active": True,
            "dtype": "int",
            "type": "categorical",
            "source": "user",
            "vocab_size": len(data.user_ids) + 2,
        },
        item_id,
    ]


def _logits(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def train_fuxictr_din(
    data: Prepared,
    item_reps: np.ndarray | None,
    seed: int,
    out_dir: Path,
    epochs: int = 20,
    cfg: FuxiDinConfig | None = None,
    features: str | None = None,
) -> PeerResult:
    """Train FuxiCTR's DIN on `data` (IDs, plus `item_reps` [N_items, d] as a frozen pretrained
    item-id embedding when given) and score val / test with reaseq.offline.metrics.

    `out_dir` receives FuxiCTR's data folder and checkpoint, `result.json` (metrics, config,
    per-epoch validation AUC) and `predictions.npz` (uncalibrated val / test probabilities).
    `features` names the row ("id", "id+text", ...); default "id" or "id+rep"."""
    cfg = cfg or FuxiDinConfig()
    check_method(cfg.calibration)
    reps = None if item_reps is None else np.asarray(item_reps, dtype=np.float32)
    _check_inputs(data, reps, epochs)
    features = features or ("id" if reps is None else "id+rep")
    fx = _fuxictr()

    out_dir = Path(out_dir)
    data_root = out_dir / "data"
    model_root = out_dir / "checkpoints"
    (model_root / DATASET_ID).mkdir(parents=True, exist_ok=True)  # FuxiCTR saves, never creates
    paths = write_longctr_data(data, data_root / DATASET_ID)
    reps_file = None
    if reps is not None:
        reps_file = out_dir / "item_reps.npz"  # FuxiCTR copies it beside its vocabulary
        np.savez(reps_file, key=np.arange(1, data.n_items + 1, dtype=np.int64), value=reps)

    torch.set_num_threads(cfg.threads)
    fx.seed_everything(seed=seed)
    params = {
        "dataset_id": DATASET_ID,
        "data_root": str(data_root),
        "feature_cols": _feature_cols(
            data, reps_file, 0 if reps is None else reps.shape[1], cfg.pretrain_usage
        ),
        "label_col": {"name": "label", "dtype": "float"},
        "train_data": str(paths["train"]),
        "valid_data": str(paths["val"]),
        "test_data": str(paths["test"]),
        "rebuild_dataset": False,  # ids are dense already: only the feature map and vocabulary
        "embedding_dim": cfg.embedding_dim,
    }
    encoder = fx.FeatureProcessor(**params)
    fx.build_dataset(encoder, **params)
    feature_map = fx.FeatureMap(DATASET_ID, str(data_root / DATASET_ID))
    feature_map.load(str(data_root / DATASET_ID / "feature_map.json"), params)

    model = fx.DIN(
        feature_map,
        model_id="DIN",
        gpu=cfg.gpu,
        task="binary_classification",
        loss="binary_crossentropy",
        optimizer="adam",
        learning_rate=cfg.learning_rate,
        metrics=["AUC", "logloss"],
        monitor="AUC",  # early stopping on validation AUC only
        monitor_mode="max",
        early_stop_patience=cfg.early_stop_patience,
        reduce_lr_on_plateau=cfg.reduce_lr_on_plateau,
        save_best_only=True,
        eval_steps=None,  # validate once per epoch
        verbose=0,
        model_root=str(model_root),
        embedding_dim=cfg.embedding_dim,
        dnn_hidden_units=list(cfg.dnn_hidden_units),
        dnn_activations=cfg.dnn_activations,
        attention_hidden_units=list(cfg.attention_hidden_units),
        attention_hidden_activations=cfg.attention_hidden_activations,
        din_use_softmax=cfg.din_use_softmax,
    )
    model.epoch_log, model.best_epoch = [], 0

    loader = {
        "data_loader": fx.LongCTRDataLoader,
        "user_info": str(paths["user_info"]),
        "item_info": str(paths["item_info"]),
        "max_len": cfg.max_len,
        "batch_size": cfg.batch_size,
        "num_workers": 0,  # in-process: deterministic order, no extra processes on shared CPUs
    }
    train_gen, valid_gen = fx.RankDataLoader(
        feature_map,
        stage="train",
        train_data=str(paths["train"]),
        valid_data=str(paths["val"]),
        shuffle=True,
        **loader,
    )
    start = time.perf_counter()
    model.fit(train_gen, epochs=epochs, validation_data=valid_gen)  # restores the best weights
    seconds = time.perf_counter() - start
    test_gen = fx.RankDataLoader(
        feature_map, stage="test", test_data=str(paths["test"]), shuffle=False, **loader
    )

    predictions = {"val": model.predict(valid_gen), "test": model.predict(test_gen)}
    val_samples = data.samples[data.samples["split"] == "val"]
    calibration = fit_calibration(
        _logits(predictions["val"]), val_samples["label"].to_numpy(), cfg.calibration
    )
    metrics: dict[str, dict[str, float]] = {}
    for split, scores in predictions.items():
        s = data.samples[data.samples["split"] == split]
        if len(scores) != len(s):  # FuxiCTR dropped or repeated rows: nothing would line up
            raise RuntimeError(f"{PEER}: {len(scores)} {split} predictions for {len(s)} samples")
        users, labels = s["user_row"].to_numpy(), s["label"].to_numpy()
        metrics[split] = ctr_metrics(users, labels, calibration.probabilities(_logits(scores)))
        metrics[f"{split}_uncalibrated"] = ctr_metrics(users, labels, scores)

    config = {
        "peer": PEER,
        "fuxictr": fx.version,
        "features": features,
        "seed": seed,
        "epochs": epochs,
        "representation_dim": None if reps is None else int(reps.shape[1]),
    } | asdict(cfg)
    result = PeerResult(
        peer=PEER,
        features=features,
        metrics=metrics,
        predictions=predictions,
        best_epoch=int(model.best_epoch),
        seconds=seconds,
        history=list(model.epoch_log),
        calibration=calibration,
        config=config,
        model=model,
    )
    _save(result, out_dir)
    return result


def _save(result: PeerResult, out_dir: Path) -> None:
    """The run's numbers beside its checkpoint, with the config that produced them."""
    summary = {
        "peer": result.peer,
        "features": result.features,
        "metrics": result.metrics,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "history": result.history,
        "calibration": result.calibration.to_dict(),
        "config": result.config,
    }
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2))
    np.savez(out_dir / "predictions.npz", **result.predictions)


def main(argv: list[str] | None = None) -> None:
    """Manual runs: python -m reaseq.offline.peers.fuxictr_din <artifacts>/<dataset>/prepared."""
    parser = argparse.ArgumentParser(
        prog="python -m reaseq.offline.peers.fuxictr_din",
        description="Train FuxiCTR's DIN on a prepared folder; print its val / test metrics.",
    )
    parser.add_argument("prepared", type=Path, help="<artifacts>/<dataset>/prepared")
    parser.add_argument("--reps", type=Path, help="item representation .npy [N_items, d]")
    parser.add_argument("--features", help="row name, e.g. id+text (default: id / id+rep)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for data and checkpoint")
    args = parser.parse_args(argv)
    data = Prepared.load(args.prepared)
    reps = np.load(args.reps, allow_pickle=False) if args.reps else None
    result = train_fuxictr_din(data, reps, args.seed, args.out, args.epochs, features=args.features)
    print(
        json.dumps(
            {
                "peer": result.peer,
                "features": result.features,
                "test": result.metrics["test"],
                "test_uncalibrated": result.metrics["test_uncalibrated"],
                "val": result.metrics["val"],
                "best_epoch": result.best_epoch,
                "train_seconds": round(result.seconds, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()


def register_experiment_peers() -> bool:
    """Make `fuxictr-din` (IDs) and `fuxictr-din+text` (IDs + the text representation) variants
    of `reaseq experiment`, with the ranker's epoch budget; False (nothing registered) where
    fuxictr is not installed."""
    import importlib.util

    if importlib.util.find_spec("fuxictr") is None:
        return False
    from reaseq.offline.experiment import PeerPredictions, register_peer

    def trainer(kind: str | None):
        def train(data, reps, seed, out_dir, train_cfg) -> PeerPredictions:
            result = train_fuxictr_din(
                data, reps[kind] if kind else None, seed, out_dir, epochs=train_cfg.epochs
            )
            return PeerPredictions(
                result.predictions["test"],
                result.predictions["val"],
                calibrated=False,
                best_epoch=result.best_epoch,
                info={"train_s": result.seconds},
            )

        return train

    register_peer("fuxictr-din", trainer(None), note="FuxiCTR 2.3.10 DIN, IDs")
    register_peer(
        "fuxictr-din+text",
        trainer("text"),
        needs=("text",),
        note="FuxiCTR 2.3.10 DIN, IDs + the text representation (frozen)",
    )
    return True
