"""Job `train`: fit the ranker on train samples, early-stop on validation, calibrate on
validation, report on test.

Early stopping looks at validation AUC only; the calibration (offline/calibration.py) is fitted on
validation only; test is scored once, with the best weights, before and after calibration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reaseq.models.ranker import Ranker, RankerConfig
from reaseq.offline.calibration import (
    Calibration,
    Method,
    check_method,
    fit_calibration,
    sigmoid,
)
from reaseq.offline.metrics import ctr_metrics, reliability
from reaseq.offline.prepare import Prepared
from reaseq.offline.representations import representation_kind

FEATURE_SETS = ("id", "id+text")  # the default ablation; any "id+<registered kind>" works
CHECKPOINT_FILE = "ranker.pt"


@dataclass
class TrainConfig:
    features: str = "id+text"  # "id": ID-only baseline; "id+<kind>": IDs + a representation
    epochs: int = 20  # upper bound; early stopping usually ends sooner
    patience: int = 2  # epochs without validation AUC gain before stopping
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 2
    eval_batch_size: int = 4096
    calibration: Method = "platt"  # fitted on validation after training: platt | temperature | none
    ranker: RankerConfig = field(default_factory=RankerConfig)


@dataclass
class TrainResult:
    model: Ranker  # best weights, calibration folded into model.scorer
    metrics: dict[str, dict[str, float]]  # val, test (calibrated), val_/test_uncalibrated
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    calibration: Calibration = field(default_factory=lambda: Calibration("none"))
    reliability: dict[str, list[dict]] = field(default_factory=dict)  # test, per calibration


def _tensors(
    data: Prepared, split: str, max_len: int
) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor]:
    samples = data.samples[data.samples["split"] == split].reset_index(drop=True)
    hist = data.histories(samples, max_len, pad=data.n_items)
    cand = torch.from_numpy(samples["item_row"].to_numpy(np.int64, copy=True))
    return samples, cand, torch.from_numpy(hist)


def trim(hist: torch.Tensor, pad: int) -> torch.Tensor:
    """Drop leading columns that are padding in every row (histories are right-aligned): most
    users have far fewer behaviors than max_behaviors, and attention cost is linear in L."""
    valid = (hist != pad).any(dim=0).nonzero()
    first = int(valid[0]) if len(valid) else hist.shape[1] - 1
    return hist[:, first:]


@torch.no_grad()
def predict_logits(model: Ranker, cand: torch.Tensor, hist: torch.Tensor, batch: int) -> np.ndarray:
    """Uncalibrated logits; metrics take float64 sigmoids of them (no float32 saturation ties)."""
    model.eval()
    pad = model.cfg.n_items
    out = [
        model(cand[i : i + batch, None], trim(hist[i : i + batch], pad))["logits"][:, 0]
        for i in range(0, len(cand), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def train_ranker(
    data: Prepared,
    representations: np.ndarray | None,
    cfg: TrainConfig,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """`on_epoch(row)` after each epoch's validation; `on_batch(done, total)` for progress bars."""
    kind = representation_kind(cfg.features)  # None for "id"; raises on unknown sets
    check_method(cfg.calibration)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rcfg = cfg.ranker
    rcfg.n_items = data.n_items
    reps = None
    if kind is not None:
        if representations is None:
            raise ValueError(f"features {cfg.features!r} need the '{kind}' item representation")
        reps = torch.from_numpy(np.asarray(representations, dtype=np.float32))
        rcfg.rep_in_dim = reps.shape[1]
    else:
        rcfg.rep_in_dim = 0
    model = Ranker(rcfg, reps)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    train_s, train_c, train_h = _tensors(data, "train", rcfg.max_behaviors)
    val_s, val_c, val_h = _tensors(data, "val", rcfg.max_behaviors)
    train_y = torch.from_numpy(train_s["label"].to_numpy(np.float32, copy=True))
    generator = torch.Generator().manual_seed(cfg.seed)

    start = time.perf_counter()
    best_auc, best_epoch, best_state, history, stale = -1.0, 0, None, [], 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train_c), generator=generator)
        total = 0.0
        n_batches = -(-len(order) // cfg.batch_size)
        for step, i in enumerate(range(0, len(order), cfg.batch_size), start=1):
            idx = order[i : i + cfg.batch_size]
            logits = model(train_c[idx, None], trim(train_h[idx], rcfg.n_items))["logits"][:, 0]
            loss = loss_fn(logits, train_y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item() * len(idx)
            if on_batch:
                on_batch(step, n_batches)
        val_pred = sigmoid(predict_logits(model, val_c, val_h, cfg.eval_batch_size))
        val = ctr_metrics(val_s["user_row"].to_numpy(), val_s["label"].to_numpy(), val_pred)
        row = {"epoch": epoch, "train_loss": total / max(len(order), 1)} | {
            f"val_{k}": v for k, v in val.items() if k != "n"
        }
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if val["auc"] > best_auc:
            best_auc, best_epoch, stale = val["auc"], epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)

    # validation only: test labels never reach the fit (a test pins this)
    val_logits = predict_logits(model, val_c, val_h, cfg.eval_batch_size)
    calibration = fit_calibration(val_logits, val_s["label"].to_numpy(), cfg.calibration)
    set_calibration(model, calibration)

    metrics, curves = {}, {}
    for split in ("val", "test"):
        s, c, h = _tensors(data, split, rcfg.max_behaviors)
        users, labels = s["user_row"].to_numpy(), s["label"].to_numpy()
        logits = predict_logits(model, c, h, cfg.eval_batch_size)
        before, after = sigmoid(logits), calibration.probabilities(logits)
        metrics[split] = ctr_metrics(users, labels, after)
        metrics[f"{split}_uncalibrated"] = ctr_metrics(users, labels, before)
        if split == "test":
            curves = {"uncalibrated": reliability(labels, before)}
            curves[f"calibrated ({calibration.method})"] = reliability(labels, after)
    seconds = time.perf_counter() - start
    return TrainResult(model, metrics, history, best_epoch, seconds, calibration, curves)


def set_calibration(model: Ranker, calibration: Calibration) -> None:
    """Fold (scale, bias) into the scoring network: checkpoint and ONNX export carry it."""
    with torch.no_grad():
        model.scorer.calibration.copy_(torch.tensor([calibration.scale, calibration.bias]))


def save_checkpoint(result: TrainResult, cfg: TrainConfig, path: Path) -> None:
    """Weights with the config that built them (nanoGPT style), so export needs nothing else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": result.model.state_dict(),
            "ranker_config": result.model.cfg.to_dict(),
            "train_config": {k: v for k, v in asdict(cfg).items() if k != "ranker"},
            "metrics": result.metrics,
            "calibration": result.calibration.to_dict(),
            "best_epoch": result.best_epoch,
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[Ranker, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    rcfg_dict = dict(ckpt["ranker_config"])
    rcfg_dict["din_hidden"] = tuple(rcfg_dict["din_hidden"])
    rcfg_dict["mlp_hidden"] = tuple(rcfg_dict["mlp_hidden"])
    rcfg = RankerConfig(**rcfg_dict)
    reps = torch.zeros(rcfg.n_items, rcfg.rep_in_dim) if rcfg.rep_in_dim else None
    model = Ranker(rcfg, reps)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if unexpected or set(missing) - {"scorer.calibration"}:  # older checkpoints: uncalibrated
        raise RuntimeError(f"{path}: checkpoint does not fit the ranker: {missing=} {unexpected=}")
    model.eval()
    return model, ckpt
