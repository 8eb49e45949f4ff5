"""GBR quality beyond IB-PPL: can it recover a behavior that really happened?

Recovery: for each GBR-validation user, one interior behavior of their train-period window is
hidden (seeded), a `[FILL]` slot takes its place (the next behavior's gap bucket becomes the gap
across the hole, as for a real slot), the sampler fills it, and the catalog is ranked by cosine to
the latent. HR@K = the hidden item is among the top K. The window's other items are excluded from
the ranking for every method (unless one of them is the hidden item). The baseline ranks by the
mean of the two neighbours' representations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reaseq.core.contract import GAP_UNKNOWN, gap_buckets
from reaseq.models.gbr import MaskPredictor
from reaseq.offline.gbr.locate import train_cutoffs
from reaseq.offline.gbr.sampler import SamplerConfig, denoise
from reaseq.offline.gbr.train import split_users
from reaseq.offline.prepare import Prepared

HR_AT = (1, 10)


def hidden_behaviors(
    data: Prepared, max_len: int, val_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per validation user with >= 3 train-period behaviors: (window items, window gaps with the
    hole applied, hidden index within the window) — the window still holds the hidden item."""
    rng = np.random.default_rng(seed + 7)
    val = np.flatnonzero(split_users(len(data.user_ids), val_fraction, seed))
    cut = train_cutoffs(data)
    buckets = data.gap_buckets()
    cases = []
    for u in val:
        start, n = int(data.beh_offsets[u]), int(cut[u])
        lo = start + max(0, n - max_len)
        items = data.beh_items[lo : start + n].astype(np.int64)
        if len(items) < 3:
            continue
        i = int(rng.integers(1, len(items) - 1))
        gaps = buckets[lo : start + n].astype(np.int64)
        times = data.beh_times[lo : start + n]
        across = gap_buckets(np.array([times[i - 1], times[i + 1]]))[1]
        if not np.isnan(times).all():
            gaps[i + 1] = across
        gaps[i] = GAP_UNKNOWN
        cases.append((items, gaps, i))
    return cases


def _hits(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    rank = (scores > scores.gather(1, targets[:, None])).sum(dim=1)
    return {f"hr@{k}": float((rank < k).float().mean()) for k in HR_AT}


@torch.no_grad()
def recovery(
    data: Prepared,
    model: MaskPredictor,
    scale: float,
    reps: np.ndarray,
    val_fraction: float,
    seed: int,
    sampler: SamplerConfig | None = None,
) -> dict:
    """HR@{1,10} of GBR and of the neighbour-mean baseline on hidden interior behaviors."""
    cases = hidden_behaviors(data, model.cfg.max_len, val_fraction, seed)
    if not cases:
        return {"cases": 0}
    device = next(model.parameters()).device
    catalog = torch.from_numpy(np.asarray(reps, np.float32) / scale).to(device)
    width = max(len(c[0]) for c in cases)
    items = np.full((len(cases), width), -1, dtype=np.int64)
    gaps = np.zeros((len(cases), width), dtype=np.int64)
    for j, (seq, gap, _) in enumerate(cases):
        items[j, : len(seq)], gaps[j, : len(seq)] = seq, gap
    hidden_t = torch.from_numpy(np.asarray([c[2] for c in cases])).to(device)
    rows = torch.arange(len(cases), device=device)
    t_items = torch.from_numpy(items).to(device)
    valid = t_items >= 0
    slots = torch.zeros_like(valid)
    slots[rows, hidden_t] = True
    x = catalog[t_items.clamp(min=0)] * (valid & ~slots)[..., None]
    filled = denoise(
        model,
        x,
        torch.from_numpy(gaps).to(device),
        valid,
        slots,
        catalog,
        sampler or SamplerConfig(),
    )
    targets = t_items[rows, hidden_t]
    gbr_vec = filled.latents[rows, hidden_t]
    neighbour_mean = (x[rows, hidden_t - 1] + x[rows, hidden_t + 1]) / 2
    seen = torch.zeros(len(cases), len(catalog), dtype=torch.bool, device=device)
    others = valid & ~slots
    seen[rows[:, None].expand_as(t_items)[others], t_items[others]] = True
    seen[rows, targets] = False

    def ranked(vectors: torch.Tensor) -> dict[str, float]:
        scores = F.normalize(vectors, dim=-1) @ F.normalize(catalog, dim=-1).T
        return _hits(scores.masked_fill(seen, -2.0), targets[:, None].squeeze(1))

    return {
        "cases": len(cases),
        "catalog": len(catalog),
        "gbr": ranked(gbr_vec),
        "neighbour_mean": ranked(neighbour_mean),
    }
