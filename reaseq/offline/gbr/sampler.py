"""Filling `[FILL]` slots: S-step denoising with low-confidence remasking (LLaDA's sampler).

Kept apart from the mask predictor, as diffusers keeps schedulers apart from denoisers: any
predictor with `forward(reps, gaps, masked, valid)` and `logits(predicted, vocabulary)` works.

All slots start masked. Each step predicts every still-masked slot, scores it against the catalog,
and commits the most confident ones (confidence = top softmax probability, plus Gumbel noise when
`temperature` > 0); the rest are masked again. After S steps every slot holds a latent vector —
the predicted direction at the catalog's typical norm — and the nearest real item for inspection.
Seeded: the same inputs and seed give the same output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SamplerConfig:
    steps: int = 4
    temperature: float = 0.0  # 0: deterministic confidence order; > 0: Gumbel-perturbed
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.temperature < 0:
            raise ValueError("steps >= 1 and temperature >= 0 are required")


@dataclass
class Filled:
    latents: torch.Tensor  # [B, L, R]: filled vectors at slots (input reps elsewhere)
    nearest: torch.Tensor  # int64 [B, L]: nearest catalog row per slot, -1 elsewhere
    confidence: torch.Tensor  # [B, L]: top catalog probability when committed, 0 elsewhere


@torch.no_grad()
def denoise(
    model: torch.nn.Module,
    reps: torch.Tensor,
    gaps: torch.Tensor,
    valid: torch.Tensor,
    slots: torch.Tensor,
    catalog: torch.Tensor,
    cfg: SamplerConfig,
) -> Filled:
    """reps [B, L, R] (slots' values ignored), gaps [B, L], valid and slots bool [B, L],
    catalog [N, R] in the predictor's input scale."""
    model.eval()
    generator = torch.Generator(device=reps.device).manual_seed(cfg.seed)
    x = reps.clone()
    remaining = slots & valid
    per_seq = remaining.sum(dim=1)
    nearest = torch.full(slots.shape, -1, dtype=torch.long, device=reps.device)
    confidence = torch.zeros(slots.shape, device=reps.device)
    norm = catalog.norm(dim=-1).mean()
    for step in range(cfg.steps):
        if not remaining.any():
            break
        predicted = model(x, gaps, remaining, valid)
        probs = torch.softmax(model.logits(predicted[remaining], catalog), dim=-1)
        top, best = probs.max(dim=-1)
        score = torch.full(slots.shape, -math.inf, device=reps.device)
        noisy = top.log()
        if cfg.temperature > 0:
            uniform = torch.rand(top.shape, generator=generator, device=reps.device)
            noisy = noisy - cfg.temperature * torch.log(-torch.log(uniform.clamp_min(1e-12)))
        score[remaining] = noisy
        # LLaDA's linear schedule: commit 1/(steps left) of each sequence's slots, all at the end
        quota = torch.ceil(per_seq / cfg.steps * (step + 1)).long() - (per_seq - remaining.sum(1))
        quota = quota.clamp(min=0)
        ranks = score.argsort(dim=1, descending=True).argsort(dim=1)
        commit = remaining & (ranks < quota[:, None])
        if step == cfg.steps - 1:
            commit = remaining
        where = commit[remaining]
        committed = F.normalize(predicted[remaining][where], dim=-1) * norm
        x[commit] = committed
        nearest[commit] = best[where]
        confidence[commit] = top[where]
        remaining = remaining & ~commit
    return Filled(x, nearest, confidence)
