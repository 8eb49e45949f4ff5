"""Job `gbr train`: the mask predictor on train-period behaviors, LLaDA recipe (DESIGN §3.3).

Per sequence t ~ U(ε, 1); each position is masked with probability t (at least one); the loss is
the in-batch softmax cross-entropy of each masked position's predicted vector against the batch's
distinct items, weighted by 1/t and averaged over the batch's positions. Users are split once
(seeded) into GBR-train and GBR-validation users; IB-PPL / IB-ACC come from validation users'
sequences masked with a fixed seed, in batches of a fixed size, so runs compare.

Checkpoints hold the model, its config, the optimizer and the epoch: `train_gbr` continues from
the last one (a killed run loses at most one epoch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reaseq.models.gbr import GBRConfig, MaskPredictor, load_minilm_layers
from reaseq.offline.prepare import Prepared

CHECKPOINT_FILE = "gbr.pt"
REPORT_FILE = "gbr_train.json"


@dataclass
class GBRTrainConfig:
    model: GBRConfig = field(default_factory=GBRConfig)
    epochs: int = 30
    patience: int = 3  # epochs without validation IB-PPL gain before stopping
    batch_size: int = 128
    eval_batch_size: int = 128  # the in-batch vocabulary of IB-PPL / IB-ACC: keep fixed to compare
    lr: float = 1e-3
    weight_decay: float = 0.01
    eps: float = 0.05  # t ~ U(eps, 1); the loss weight 1/t is at most 1/eps
    val_users: float = 0.1
    # leave a sequence's own known items out of its in-batch vocabulary (unless one is the
    # target): a generated behavior that repeats the log adds nothing
    exclude_context: bool = False
    # train against the whole catalog instead of the batch's items (IB-PPL / IB-ACC stay
    # in-batch): the vocabulary recovery and serving rank against
    catalog_softmax: bool = False
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def split_users(n_users: int, fraction: float, seed: int) -> np.ndarray:
    """bool [U]: True for GBR-validation users (fixed by the seed)."""
    rng = np.random.default_rng(seed)
    return rng.random(n_users) < fraction


@dataclass
class Chunks:
    """Train-period windows of at most max_len behaviors: item rows and gap buckets, left-aligned,
    `valid` marks real positions."""

    rows: np.ndarray  # int64 [K, L]
    gaps: np.ndarray  # int64 [K, L]
    valid: np.ndarray  # bool [K, L]
    users: np.ndarray  # int64 [K]
    starts: np.ndarray  # int64 [K]: absolute behavior position of column 0


def train_chunks(data: Prepared, users: np.ndarray, max_len: int, min_len: int = 3) -> Chunks:
    """Each listed user's train-period behaviors, cut into consecutive windows of max_len."""
    from reaseq.offline.gbr.locate import train_cutoffs

    cut = train_cutoffs(data)
    buckets = data.gap_buckets()
    rows, gaps, valid, owners, starts = [], [], [], [], []
    for u in users:
        start, n = int(data.beh_offsets[u]), int(cut[u])
        for lo in range(0, n, max_len):
            length = min(max_len, n - lo)
            if length < min_len:
                continue
            r = np.full(max_len, -1, dtype=np.int64)
            g = np.zeros(max_len, dtype=np.int64)
            r[:length] = data.beh_items[start + lo : start + lo + length]
            g[:length] = buckets[start + lo : start + lo + length]
            rows.append(r)
            gaps.append(g)
            valid.append(r >= 0)
            owners.append(u)
            starts.append(start + lo)
    empty = np.zeros((0, max_len))
    return Chunks(
        np.stack(rows) if rows else empty.astype(np.int64),
        np.stack(gaps) if gaps else empty.astype(np.int64),
        np.stack(valid) if valid else empty.astype(bool),
        np.asarray(owners, dtype=np.int64),
        np.asarray(starts, dtype=np.int64),
    )


def length_batches(lengths: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length in random order: most users are short, and a batch is as wide
    as its longest sequence, so random batches would be mostly padding."""
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def normalized_reps(reps: np.ndarray) -> tuple[torch.Tensor, float]:
    """Representations scaled to mean norm 1 (the predictor's input scale) and that scale."""
    reps = np.asarray(reps, dtype=np.float32)
    scale = float(np.linalg.norm(reps, axis=1).mean()) or 1.0
    return torch.from_numpy(reps / scale), scale


def masked_batch(valid: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mask each valid position with its sequence's probability t, at least one per sequence."""
    draw = torch.rand(valid.shape, generator=generator, device=valid.device)
    masked = (draw < t[:, None]) & valid
    # a sequence with nothing masked gets its position with the smallest draw masked
    none = ~masked.any(dim=1)
    if none.any():
        pick = torch.where(valid, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
        masked[none, pick[none]] = True
    return masked


def in_batch_loss(
    model: MaskPredictor,
    reps: torch.Tensor,
    rows: torch.Tensor,
    gaps: torch.Tensor,
    valid: torch.Tensor,
    masked: torch.Tensor,
    exclude_context: bool = False,
    catalog: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per masked position: (cross-entropy, top-1 correct) against the batch's distinct items.
    Columns that are padding in every row are dropped first (sequences are left-aligned)."""
    width = int(valid.any(dim=0).nonzero().max()) + 1 if valid.any() else 1
    rows, gaps, valid, masked = (
        rows[:, :width],
        gaps[:, :width],
        valid[:, :width],
        masked[:, :width],
    )
    safe = rows.clamp(min=0)
    inputs = reps[safe] * valid[..., None]
    predicted = model(inputs, gaps, masked, valid)
    if catalog:
        vocab, inverse = torch.arange(len(reps), device=rows.device), safe[valid]
    else:
        vocab, inverse = torch.unique(safe[valid], return_inverse=True)
    targets = torch.full_like(safe, -1)
    targets[valid] = inverse
    logits = model.logits(predicted[masked], reps[vocab])
    if exclude_context:
        known = torch.zeros(len(rows), len(vocab), dtype=torch.bool, device=rows.device)
        seen = valid & ~masked
        known[torch.nonzero(seen)[:, 0], targets[seen]] = True
        own = known[torch.nonzero(masked)[:, 0]]  # [M, V]
        own[torch.arange(len(own)), targets[masked]] = False
        logits = logits.masked_fill(own, -1e4)
    ce = F.cross_entropy(logits, targets[masked], reduction="none")
    return ce, logits.argmax(dim=-1) == targets[masked]


@torch.no_grad()
def evaluate_ib(
    model: MaskPredictor, reps: torch.Tensor, chunks: Chunks, cfg: GBRTrainConfig
) -> dict[str, float]:
    """IB-PPL = exp(mean in-batch CE), IB-ACC = top-1 in-batch accuracy, on validation masked
    positions (fixed seed: every call masks the same positions)."""
    model.eval()
    device = reps.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    ces, hits = [], []
    for i in range(0, len(chunks.rows), cfg.eval_batch_size):
        rows = torch.from_numpy(chunks.rows[i : i + cfg.eval_batch_size]).to(device)
        gaps = torch.from_numpy(chunks.gaps[i : i + cfg.eval_batch_size]).to(device)
        valid = rows >= 0
        t = cfg.eps + (1 - cfg.eps) * torch.rand(len(rows), generator=generator, device=device)
        masked = masked_batch(valid, t, generator)
        ce, hit = in_batch_loss(model, reps, rows, gaps, valid, masked, cfg.exclude_context)
        ces.append(ce)
        hits.append(hit)
    if not ces:
        return {"ib_ppl": float("nan"), "ib_acc": float("nan"), "masked": 0}
    ce, hit = torch.cat(ces), torch.cat(hits)
    return {
        "ib_ppl": float(torch.exp(ce.mean())),
        "ib_acc": float(hit.float().mean()),
        "masked": len(ce),
    }


def resume_identity(config: dict) -> dict:
    """What must match to continue a checkpoint: not the device, threads or stopping rule."""
    return {k: v for k, v in config.items() if k not in ("device", "threads", "epochs", "patience")}


def build_model(cfg: GBRTrainConfig, rep_dim: int) -> tuple[MaskPredictor, int]:
    """A fresh predictor (warm-started when configured); returns it and the tensors copied."""
    cfg.model.rep_dim = rep_dim
    torch.manual_seed(cfg.seed)
    model = MaskPredictor(cfg.model)
    copied = load_minilm_layers(model) if cfg.model.warm_start == "minilm" else 0
    return model, copied


@dataclass
class GBRTrainResult:
    model: MaskPredictor
    scale: float  # representation scale the model reads (normalized_reps)
    history: list[dict]
    best: dict
    seconds_per_epoch: float
    device: str


def train_gbr(
    data: Prepared,
    reps: np.ndarray,
    cfg: GBRTrainConfig,
    out_dir: Path,
    on_epoch: Callable[[dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> GBRTrainResult:
    """Train (or continue training) into out_dir; the best epoch's weights are the result."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.resolved_device()
    out_dir.mkdir(parents=True, exist_ok=True)
    item_reps, scale = normalized_reps(reps)
    item_reps = item_reps.to(device)
    model, copied = build_model(cfg, item_reps.shape[1])
    model.to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    val_mask = split_users(len(data.user_ids), cfg.val_users, cfg.seed)
    train = train_chunks(data, np.flatnonzero(~val_mask), cfg.model.max_len)
    val = train_chunks(data, np.flatnonzero(val_mask), cfg.model.max_len)
    if len(train.rows) == 0:
        raise ValueError("no train-period sequence of 3 or more behaviors: nothing to train on")

    path = out_dir / CHECKPOINT_FILE
    state = {"epoch": 0, "history": [], "best": None, "best_state": None, "stale": 0}
    if path.exists():
        saved = torch.load(path, map_location=device, weights_only=True)
        if resume_identity(saved["config"]) != resume_identity(asdict(cfg)):
            raise ValueError(
                f"{path} was trained with another configuration; remove it or use another "
                "output folder"
            )
        model.load_state_dict(saved["state_dict"])
        optim.load_state_dict(saved["optimizer"])
        state = saved["state"]
    rows_all = torch.from_numpy(train.rows).to(device)
    gaps_all = torch.from_numpy(train.gaps).to(device)

    epoch_seconds = []
    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        started = time.perf_counter()
        model.train()
        # seeded per epoch, so a resumed run draws exactly what an unbroken one would
        generator = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * state["epoch"])
        torch.manual_seed(cfg.seed + 1000 * state["epoch"])  # dropout draws from the global RNG
        order_rng = np.random.default_rng(cfg.seed + state["epoch"])
        batches = length_batches(train.valid.sum(axis=1), cfg.batch_size, order_rng)
        n_batches = len(batches)
        total, count = 0.0, 0
        for step, batch in enumerate(batches, start=1):
            idx = torch.from_numpy(batch).to(device)
            rows, gaps = rows_all[idx], gaps_all[idx]
            valid = rows >= 0
            t = cfg.eps + (1 - cfg.eps) * torch.rand(len(rows), generator=generator, device=device)
            masked = masked_batch(valid, t, generator)
            ce, _ = in_batch_loss(
                model,
                item_reps,
                rows,
                gaps,
                valid,
                masked,
                cfg.exclude_context,
                cfg.catalog_softmax,
            )
            weights = (1.0 / t)[:, None].expand_as(masked)[masked]
            loss = (ce * weights).sum() / valid.sum()
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            total += float(loss.detach()) * len(rows)
            count += len(rows)
            if on_batch:
                on_batch(step, n_batches)
        epoch_seconds.append(time.perf_counter() - started)
        state["epoch"] += 1
        row = {"epoch": state["epoch"], "train_loss": total / max(count, 1)}
        row |= {f"val_{k}": v for k, v in evaluate_ib(model, item_reps, val, cfg).items()}
        row["seconds"] = round(epoch_seconds[-1], 4)
        state["history"].append(row)
        if state["best"] is None or row["val_ib_ppl"] < state["best"]["val_ib_ppl"]:
            state["best"], state["stale"] = row, 0
            state["best_state"] = {
                k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            }
        else:
            state["stale"] += 1
        torch.save(
            {
                "config": asdict(cfg),
                "state_dict": model.state_dict(),
                "optimizer": optim.state_dict(),
                "state": state,
                "scale": scale,
                "warm_start_tensors": copied,
            },
            path,
        )
        if on_epoch:
            on_epoch(row)
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    timed = [r["seconds"] for r in state["history"]]
    result = GBRTrainResult(
        model,
        scale,
        state["history"],
        state["best"] or {},
        float(np.median(timed)) if timed else 0.0,
        str(device),
    )
    (out_dir / REPORT_FILE).write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "device": str(device),
                "train_sequences": len(train.rows),
                "val_sequences": len(val.rows),
                "warm_start_tensors": copied,
                "seconds_per_epoch_median": result.seconds_per_epoch,
                "best": result.best,
                "history": result.history,
            },
            indent=2,
        )
    )
    return result


def load_gbr(path: Path) -> tuple[MaskPredictor, float, dict]:
    """The best weights of a finished (or interrupted) run, its representation scale, config."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model_cfg = GBRConfig(**saved["config"]["model"])
    model = MaskPredictor(model_cfg)
    model.load_state_dict(saved["state"]["best_state"] or saved["state_dict"])
    model.eval()
    return model, float(saved["scale"]), saved["config"]
