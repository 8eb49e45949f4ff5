"""Explanations: which behaviors each candidate attended to, read from the model's attention
output (contract.ATTENTION), with what the service knows about each behavior.

The behavior sequence the model reads is the user's published behaviors (real or GBR-generated)
followed by the request's known recent items, cut to the release's last `max_behaviors`, exactly as
`ranking.assemble` builds it. Published behaviors are stored as vectors, not ids; a real one is
named by finding its exact vector in the release's item table (embedded store), a generated one
has no id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reaseq.core import contract
from reaseq.service.query import AttendedBehavior
from reaseq.service.store import FeatureView


@dataclass
class BehaviorInfo:
    """Per position of the served behavior sequence: where it came from and what it is."""

    source: list[str]
    item_id: list[str]
    generated: np.ndarray  # bool [L]
    gap_bucket: np.ndarray  # int [L]


def behavior_info(
    published_ids: list[str],
    published_generated: np.ndarray,
    published_gaps: np.ndarray,
    recent_ids: list[str],
    max_behaviors: int,
) -> BehaviorInfo:
    """What each served position holds, cut like the model's input (the last max_behaviors)."""
    source = ["published"] * len(published_ids) + ["recent"] * len(recent_ids)
    item_id = list(published_ids) + list(recent_ids)
    generated = np.concatenate([published_generated.astype(bool), np.zeros(len(recent_ids), bool)])
    gaps = np.concatenate(
        [published_gaps.astype(np.int64), np.full(len(recent_ids), contract.GAP_RECENT)]
    )
    cut = max(len(source) - max_behaviors, 0)
    return BehaviorInfo(source[cut:], item_id[cut:], generated[cut:], gaps[cut:])


def top_attended(
    attention: np.ndarray, info: BehaviorInfo, top_k: int
) -> list[list[AttendedBehavior]]:
    """attention [C, L] -> per candidate its `top_k` heaviest behaviors (none for an empty
    history: the model then attends to nothing)."""
    n_behaviors = len(info.source)
    if n_behaviors == 0:
        return [[] for _ in range(attention.shape[0])]
    weights = attention[:, :n_behaviors]
    k = min(top_k, n_behaviors)
    top = np.argpartition(-weights, k - 1, axis=1)[:, :k]  # (C, k), unordered
    top_weights = np.take_along_axis(weights, top, axis=1)
    order = np.argsort(-top_weights, axis=1, kind="stable")  # heaviest first
    top = np.take_along_axis(top, order, axis=1)
    # Python scalars in bulk (tolist), not one numpy scalar at a time
    positions = top.tolist()
    top_weights = np.take_along_axis(top_weights, order, axis=1).tolist()
    generated = info.generated[top].tolist()
    gaps = info.gap_bucket[top].tolist()
    source, item_id = info.source, info.item_id
    return [
        [
            {
                "position": j,
                "source": source[j],
                "item_id": item_id[j],
                "generated": g,
                "gap_bucket": gap,
                "weight": w,
                "knowledge": "",
            }
            for j, g, gap, w in zip(row, row_generated, row_gaps, row_weights, strict=True)
        ]
        for row, row_generated, row_gaps, row_weights in zip(
            positions, generated, gaps, top_weights, strict=True
        )
    ]


async def join_knowledge(
    features: FeatureView, explanations: list[list[AttendedBehavior]], candidate_ids: list[str]
) -> list[str]:
    """Fills each named behavior's `knowledge` from the release and returns the candidates'
    knowledge texts: one read for every distinct item the response names."""
    named = {b["item_id"] for behaviors in explanations for b in behaviors if b["item_id"]}
    wanted = list(dict.fromkeys([*candidate_ids, *named]))
    texts = dict(zip(wanted, await features.knowledge(wanted), strict=True))
    for behaviors in explanations:
        for behavior in behaviors:
            behavior["knowledge"] = texts.get(behavior["item_id"], "")
    return [texts[item_id] for item_id in candidate_ids]
