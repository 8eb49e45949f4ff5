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
from typing import Protocol

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
    # calibrated click probabilities per split ("val", "test"), in the order of the split's rows
    # of `data.samples` (what experiments bootstrap and bucket)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


class Histories(Protocol):
    """Where a sample's behavior history comes from: the plain log, or GBR-filled prefixes."""

    generated: np.ndarray  # [G, R] latents of generated rows (n_items + 1 + g); empty if none

    def for_samples(self, samples: pd.DataFrame, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(item rows int64 [S, max_len], gap buckets uint8 [S, max_len]), right-aligned."""
        ...


@dataclass
class PlainHistories:
    """The user's logged behaviors before the sample, nothing generated."""

    data: Prepared
    generated: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def for_samples(self, samples: pd.DataFrame, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.data.histories(samples, max_len, pad=self.data.n_items)
        return rows, self.data.history_gaps(samples, max_len)


@dataclass
class SplitTensors:
    samples: pd.DataFrame
    cand: torch.Tensor  # [S]
    hist: torch.Tensor  # [S, L]
    gaps: torch.Tensor  # [S, L]


def _tensors(data: Prepared, split: str, max_len: int, histories: Histories) -> SplitTensors:
    samples = data.samples[data.samples["split"] == split].reset_index(drop=True)
    rows, gaps = histories.for_samples(samples, max_len)
    cand = torch.from_numpy(samples["item_row"].to_numpy(np.int64, copy=True))
    return SplitTensors(
        samples, cand, torch.from_numpy(rows), torch.from_numpy(gaps.astype(np.int64))
    )


def trim(hist: torch.Tensor, gaps: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop leading columns that are padding in every row (histories are right-aligned): most
    users have far fewer behaviors than max_behaviors, and attention cost is linear in L."""
    valid = (hist != pad).any(dim=0).nonzero()
    first = int(valid[0]) if len(valid) else hist.shape[1] - 1
    return hist[:, first:], gaps[:, first:]


@torch.no_grad()
def predict_logits(model: Ranker, t: SplitTensors, batch: int) -> np.ndarray:
    """Uncalibrated logits; metrics take float64 sigmoids of them (no float32 saturation ties)."""
    model.eval()
    pad = model.cfg.n_items
    out = [
        model(
            t.cand[i : i + batch, None], *trim(t.hist[i : i + batch], t.gaps[i : i + batch], pad)
        )["logits"][:, 0]
        for i in range(0, len(t.cand), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def train_ranker(
    data: Prepared,
    representations: np.ndarray | None,
    cfg: TrainConfig,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    histories: Histories | None = None,
) -> TrainResult:
    """`on_epoch(row)` after each epoch's validation; `on_batch(done, total)` for progress bars;
    `histories` defaults to the plain log (GBR passes its filled prefixes)."""
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
    histories = histories or PlainHistories(data)
    if len(histories.generated):
        model.items.set_generated(torch.from_numpy(np.asarray(histories.generated, np.float32)))
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    train = _tensors(data, "train", rcfg.max_behaviors, histories)
    val = _tensors(data, "val", rcfg.max_behaviors, histories)
    train_y = torch.from_numpy(train.samples["label"].to_numpy(np.float32, copy=True))
    generator = torch.Generator().manual_seed(cfg.seed)

    start = time.perf_counter()
    best_auc, best_epoch, best_state, history, stale = -1.0, 0, None, [], 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train.cand), generator=generator)
        total = 0.0
        n_batches = -(-len(order) // cfg.batch_size)
        for step, i in enumerate(range(0, len(order), cfg.batch_size), start=1):
            idx = order[i : i + cfg.batch_size]
            hist, gaps = trim(train.hist[idx], train.gaps[idx], rcfg.n_items)
            logits = model(train.cand[idx, None], hist, gaps)["logits"][:, 0]
            loss = loss_fn(logits, train_y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item() * len(idx)
            if on_batch:
                on_batch(step, n_batches)
        val_pred = sigmoid(predict_logits(model, val, cfg.eval_batch_size))
        val_m = ctr_metrics(
            val.samples["user_row"].to_numpy(), val.samples["label"].to_numpy(), val_pred
        )
        row = {"epoch": epoch, "train_loss": total / max(len(order), 1)} | {
            f"val_{k}": v for k, v in val_m.items() if k != "n"
        }
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if val_m["auc"] > best_auc:
            best_auc, best_epoch, stale = val_m["auc"], epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)

    # validation only: test labels never reach the fit (a test pins this)
    val_logits = predict_logits(model, val, cfg.eval_batch_size)
    calibration = fit_calibration(val_logits, val.samples["label"].to_numpy(), cfg.calibration)
    set_calibration(model, calibration)

    metrics, curves, predictions = {}, {}, {}
    for split in ("val", "test"):
        t = _tensors(data, split, rcfg.max_behaviors, histories)
        users, labels = t.samples["user_row"].to_numpy(), t.samples["label"].to_numpy()
        logits = predict_logits(model, t, cfg.eval_batch_size)
        before, after = sigmoid(logits), calibration.probabilities(logits)
        metrics[split] = ctr_metrics(users, labels, after)
        metrics[f"{split}_uncalibrated"] = ctr_metrics(users, labels, before)
        predictions[split] = after
        if split == "test":
            curves = {"uncalibrated": reliability(labels, before)}
            curves[f"calibrated ({calibration.method})"] = reliability(labels, after)
    seconds = time.perf_counter() - start
    return TrainResult(
        model, metrics, history, best_epoch, seconds, calibration, curves, predictions
    )


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
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    rcfg_dict = dict(ckpt["ranker_config"])
    rcfg_dict["din_hidden"] = tuple(rcfg_dict["din_hidden"])
    rcfg_dict["mlp_hidden"] = tuple(rcfg_dict["mlp_hidden"])
    rcfg_dict.setdefault("behavior_side", False)  # checkpoints from before GBR
    rcfg = RankerConfig(**rcfg_dict)
    reps = torch.zeros(rcfg.n_items, rcfg.rep_in_dim) if rcfg.rep_in_dim else None
    model = Ranker(rcfg, reps)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    # older checkpoints: uncalibrated, and without the generated-behavior ID vector
    if unexpected or set(missing) - {"scorer.calibration", "items.generated_id"}:
        raise RuntimeError(f"{path}: checkpoint does not fit the ranker: {missing=} {unexpected=}")
    model.eval()
    return model, ckpt
