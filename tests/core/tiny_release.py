"""Small hand-built releases with a real ONNX model, in either value format, independent of the
training pipeline: a three-input model for format 1, a five-input one (contract.SIDE_INPUT_NAMES)
for format 2, whose scores depend on every behavior's gap bucket and generated flag."""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path

import torch

from reaseq.core import contract
from reaseq.offline.verify_bench import synthetic_release

DIM = 8
BEHAVIORS = 6  # published behaviors per user, also the release's max_behaviors


class TinyScorer(torch.nn.Module):
    """Masked mean of the behaviors dotted with each candidate; with side inputs, plus a
    per-bucket weight and the generated flag of every real behavior."""

    def __init__(self, side_inputs: bool) -> None:
        super().__init__()
        self.side_inputs = side_inputs
        self.gap_weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, contract.N_GAP_BUCKETS))

    def forward(self, candidates, behaviors, behavior_mask, gap_buckets=None, generated=None):
        weights = behavior_mask / behavior_mask.sum(1, keepdim=True).clamp(min=1.0)
        user = (behaviors * weights[..., None]).sum(1)
        logits = (candidates * user[:, None, :]).sum(-1)
        if self.side_inputs:
            side = self.gap_weight[gap_buckets] + 0.5 * generated
            logits = logits + (side * behavior_mask).sum(1, keepdim=True)
        return torch.sigmoid(logits)


@functools.cache
def tiny_model(side_inputs: bool, dim: int = DIM) -> bytes:
    """ONNX bytes of a `TinyScorer`; B, C and L are dynamic, as in a real export."""
    names = list(contract.INPUT_NAMES) + (list(contract.SIDE_INPUT_NAMES) if side_inputs else [])
    example = (torch.randn(2, 3, dim), torch.randn(2, 5, dim), torch.ones(2, 5))
    if side_inputs:
        example += (torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5))
    per_behavior = {0: "batch", 1: "behaviors"}
    axes = {name: per_behavior for name in names[1:]}
    axes |= {contract.CANDIDATES: {0: "batch", 1: "candidates"}}
    axes |= {contract.SCORES: {0: "batch", 1: "candidates"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TinyScorer(side_inputs).eval(),
            example,
            buffer,
            input_names=names,
            output_names=list(contract.OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def tiny_release(
    root: Path,
    release: str,
    value_format: int,
    side_inputs: bool | None = None,
    n_items: int = 40,
    n_users: int = 30,
    seed: int = 0,
) -> Path:
    """A release folder (not yet sealed) whose model takes the side inputs exactly in format 2,
    unless `side_inputs` says otherwise (a mismatched release, for refusal tests)."""
    side = value_format == 2 if side_inputs is None else side_inputs
    return synthetic_release(
        root,
        n_items,
        n_users,
        BEHAVIORS,
        DIM,
        seed=seed,
        value_format=value_format,
        model=tiny_model(side),
        release=release,
    )
