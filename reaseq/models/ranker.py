"""The CTR ranker: item tower (ids + representations) and a catalog-independent scoring network.

Training runs the whole `Ranker`; export keeps only `ScoringNet`, whose inputs are dense vectors
(DESIGN §3.4, serving-friendly split): the item tower is evaluated once per item at export time and
its output is what the feature store publishes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from reaseq.core.contract import N_GAP_BUCKETS


@dataclass
class RankerConfig:
    n_items: int = 0  # catalog size (ID embedding rows; one more row is the padding vector)
    id_dim: int = 32  # width of the learned ID embedding
    rep_in_dim: int = 0  # width of the fixed item representation (0: ID-only ranker)
    rep_dim: int = 64  # width the representation is adapted to inside the item vector
    attention: Literal["dot", "din"] = "dot"  # dot: multi-head scaled dot-product; din: DIN MLP
    n_heads: int = 2  # dot attention heads
    attn_dim: int = 64  # dot attention width (all heads together)
    din_hidden: tuple[int, int] = (80, 40)  # DIN activation unit, first layer factorised
    mlp_hidden: tuple[int, ...] = (200, 80)  # prediction head
    dropout: float = 0.1
    max_behaviors: int = 100  # behaviors kept per sample (most recent)
    # behavior side also reads each behavior's time-gap bucket and generated (GBR) flag; the
    # exported model then takes contract.SIDE_INPUT_NAMES. False only for older checkpoints.
    behavior_side: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def item_dim(self) -> int:
        """D: width of a published item vector."""
        return self.id_dim + (self.rep_dim if self.rep_in_dim else 0)

    def to_dict(self) -> dict:
        return asdict(self)


class DotTargetAttention(nn.Module):
    """Multi-head scaled dot-product attention from each candidate over the behaviors."""

    def __init__(self, dim: int, attn_dim: int, n_heads: int) -> None:
        super().__init__()
        assert attn_dim % n_heads == 0, "attn_dim must be divisible by n_heads"
        self.n_heads, self.head_dim = n_heads, attn_dim // n_heads
        self.q = nn.Linear(dim, attn_dim)
        self.kv = nn.Linear(dim, 2 * attn_dim)
        self.out = nn.Linear(attn_dim, dim)

    def forward(self, cand: torch.Tensor, beh: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(cand, beh, mask)[0]

    def attend(
        self, cand: torch.Tensor, beh: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(interest (B, C, D), attention weights averaged over heads (B, C, L))."""
        b, c, _ = cand.shape
        length = beh.shape[1]
        q = self.q(cand).view(b, c, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, C, hd)
        k, v = self.kv(beh).chunk(2, dim=-1)
        k = k.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        v = v.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / self.head_dim**0.5  # (B, H, C, L)
        logits = logits.masked_fill(mask[:, None, None, :] <= 0, -1e4)
        weights = torch.softmax(logits, dim=-1)  # (B, H, C, L)
        pooled = weights @ v  # (B, H, C, hd)
        pooled = pooled.transpose(1, 2).reshape(b, c, -1)
        has_any = (mask.sum(-1) > 0).to(cand.dtype)[:, None, None]  # empty history -> zero
        return self.out(pooled) * has_any, weights.mean(1) * has_any  # (B, C, D), (B, C, L)


class DinTargetAttention(nn.Module):
    """DIN activation unit over [q, k, q-k, q*k]; the linear q and k terms are computed once per
    candidate / per behavior (factorised first layer), only the q*k term is per pair."""

    def __init__(self, dim: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        h1, h2 = hidden
        self.w_q = nn.Linear(dim, h1)  # acts on q (and the +q of q-k)
        self.w_k = nn.Linear(dim, h1, bias=False)  # acts on k (and the -k of q-k)
        self.w_qk = nn.Linear(dim, h1, bias=False)  # acts on q*k
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1))

    def forward(self, cand: torch.Tensor, beh: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(cand, beh, mask)[0]

    def attend(
        self, cand: torch.Tensor, beh: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(interest (B, C, D), activation weights (B, C, L), unnormalised as in DIN)."""
        a_q = self.w_q(cand)[:, :, None, :]  # (B, C, 1, h1)
        a_k = self.w_k(beh)[:, None, :, :]  # (B, 1, L, h1)
        a_qk = self.w_qk(cand[:, :, None, :] * beh[:, None, :, :])  # (B, C, L, h1)
        weights = self.mlp(a_q + a_k + a_qk).squeeze(-1) * mask[:, None, :]  # (B, C, L)
        return weights @ beh, weights  # (B, C, D), DIN: weighted sum, no softmax


class ScoringNet(nn.Module):
    """Dense part of the ranker: (candidates, behaviors, mask) -> click probability. Exported."""

    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        dim = cfg.item_dim
        if cfg.attention == "dot":
            self.attention: nn.Module = DotTargetAttention(dim, cfg.attn_dim, cfg.n_heads)
        else:
            self.attention = DinTargetAttention(dim, cfg.din_hidden)
        layers: list[nn.Module] = []
        width = 3 * dim
        for hidden in cfg.mlp_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)
        self.behavior_side = cfg.behavior_side
        if cfg.behavior_side:  # added to behavior vectors; zero at start: plain attention
            self.gap_embedding = nn.Embedding(N_GAP_BUCKETS, dim)
            nn.init.zeros_(self.gap_embedding.weight)
            self.generated_vector = nn.Parameter(torch.zeros(dim))
        # (scale, bias) of the Platt / temperature calibration of the logit, fitted on validation
        # after training (offline/calibration.py); identity until then. A buffer, so the
        # checkpoint and the exported ONNX model carry it and `scores` are calibrated.
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def logits(
        self,
        cand: torch.Tensor,
        beh: torch.Tensor,
        mask: torch.Tensor,
        gaps: torch.Tensor | None = None,
        generated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Uncalibrated logits (what BCE trains). gaps int [B, L] and generated float [B, L]
        are read when the net has a behavior side (missing: unknown gap, real behavior)."""
        return self.logits_and_attention(cand, beh, mask, gaps, generated)[0]

    def logits_and_attention(
        self,
        cand: torch.Tensor,
        beh: torch.Tensor,
        mask: torch.Tensor,
        gaps: torch.Tensor | None = None,
        generated: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, C) and each candidate's attention over the behaviors (B, C, L)."""
        if self.behavior_side:
            if gaps is not None:
                beh = beh + self.gap_embedding(gaps.long())
            if generated is not None:
                beh = beh + generated[..., None] * self.generated_vector
        interest, weights = self.attention.attend(cand, beh, mask)  # (B, C, D), (B, C, L)
        features = torch.cat([cand, interest, cand * interest], dim=-1)  # (B, C, 3D)
        return self.head(features).squeeze(-1), weights  # (B, C), (B, C, L)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated logits: scale > 0, so the order of the scores (AUC, GAUC) is unchanged."""
        return logits * self.calibration[0] + self.calibration[1]

    def forward(
        self,
        cand: torch.Tensor,
        beh: torch.Tensor,
        mask: torch.Tensor,
        gaps: torch.Tensor | None = None,
        generated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.sigmoid(self.calibrate(self.logits(cand, beh, mask, gaps, generated)))

    def explained(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B, C), attention (B, C, L)): what the exported model outputs."""
        logits, weights = self.logits_and_attention(*inputs)
        return torch.sigmoid(self.calibrate(logits)), weights


class ItemTower(nn.Module):
    """Item vector = [ID embedding ‖ adapted representation]; row n_items is padding (zeros).

    Rows above n_items are GBR-generated behaviors (`set_generated`): they have no ID, so their
    vector is [one learned generated-ID vector ‖ adapted latent representation]."""

    def __init__(self, cfg: RankerConfig, representations: torch.Tensor | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.id_embedding = nn.Embedding(cfg.n_items + 1, cfg.id_dim, padding_idx=cfg.n_items)
        nn.init.normal_(self.id_embedding.weight, std=0.05)
        with torch.no_grad():
            self.id_embedding.weight[cfg.n_items].zero_()
        if cfg.rep_in_dim:
            assert representations is not None and representations.shape[1] == cfg.rep_in_dim
            padded = torch.cat([representations, torch.zeros(1, cfg.rep_in_dim)])
            self.register_buffer("representations", padded.float())
            self.adapter = nn.Linear(cfg.rep_in_dim, cfg.rep_dim)
            # zeros, not random: no draw from the RNG, so rankers without GBR initialise as before
            self.generated_id = nn.Parameter(torch.zeros(cfg.id_dim))
            # the latents of one training run; not part of the checkpoint (a release gets its
            # own served sequences' latents through `generated_vectors`)
            self.register_buffer("generated", torch.zeros(0, cfg.rep_in_dim), persistent=False)

    def set_generated(self, latents: torch.Tensor) -> None:
        if not self.cfg.rep_in_dim:
            raise ValueError("generated behaviors need a representation (features id+<kind>)")
        self.generated = latents.float().to(self.generated.device)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        n = self.cfg.n_items
        is_generated = items > n
        real = items.masked_fill(is_generated, n)
        vec = self.id_embedding(real)
        if self.cfg.rep_in_dim:
            reps = self.representations[real]
            if len(self.generated):
                g = (items - n - 1).clamp(0, len(self.generated) - 1)
                reps = torch.where(is_generated[..., None], self.generated[g], reps)
                vec = torch.where(is_generated[..., None], self.generated_id.expand_as(vec), vec)
            rep = self.adapter(reps)
            rep = rep * (items != n).unsqueeze(-1).to(rep.dtype)  # padding stays 0
            vec = torch.cat([vec, rep], dim=-1)
        return vec

    @torch.no_grad()
    def generated_vectors(self, latents: torch.Tensor) -> torch.Tensor:
        """[G, D] published vectors of generated behaviors with these latent representations."""
        rep = self.adapter(latents.float())
        return torch.cat([self.generated_id.expand(len(latents), -1), rep], dim=-1)

    @torch.no_grad()
    def all_vectors(self) -> torch.Tensor:
        """[N, D] vectors of every catalog item: what the feature store publishes."""
        return self.forward(torch.arange(self.cfg.n_items))


class Ranker(nn.Module):
    """Training-time model: item ids in, logits out."""

    def __init__(self, cfg: RankerConfig, representations: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = ItemTower(cfg, representations)
        self.scorer = ScoringNet(cfg)

    def forward(
        self,
        candidates: torch.Tensor,
        behaviors: torch.Tensor,
        gaps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """candidates (B, C) item rows; behaviors (B, L) item rows, padding = n_items, generated
        > n_items; gaps (B, L) their gap buckets. `logits` are uncalibrated (the training loss);
        `y_pred` is the calibrated probability, the exported model's `scores`."""
        n = self.cfg.n_items
        mask = (behaviors != n).float()
        generated = (behaviors > n).float()
        beh = self.items(behaviors)
        logits = self.scorer.logits(self.items(candidates), beh, mask, gaps, generated)
        return {"logits": logits, "y_pred": torch.sigmoid(self.scorer.calibrate(logits))}
