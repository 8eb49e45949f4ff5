"""The scoring model's tensor contract, shared by export (offline) and the model backends (service).

The exported model takes dense vectors, not ids (DESIGN §3.4, "serving-friendly split"): one row of
the batch is one request, with C candidates scored against L behaviors, all vectors of width D.

Behavior-side inputs (DESIGN §3.4: "behavior side additionally with time-gap bucket and the
generated flag") arrived with GBR. Models exported before them take the first three inputs only;
the service feeds the side inputs exactly when the model declares them.
"""

from __future__ import annotations

import numpy as np

CANDIDATES = "candidates"  # float32 [B, C, D]: candidate item vectors
BEHAVIORS = "behaviors"  # float32 [B, L, D]: behavior item vectors, oldest first, right-aligned
BEHAVIOR_MASK = "behavior_mask"  # float32 [B, L]: 1 for a real behavior, 0 for padding
BEHAVIOR_GAP_BUCKETS = "behavior_gap_buckets"  # int64 [B, L]: GAP_* bucket of each behavior
BEHAVIOR_GENERATED = "behavior_generated"  # float32 [B, L]: 1 for a GBR-generated behavior
SCORES = "scores"  # float32 [B, C]: click probability per candidate
# float32 [B, C, L]: how much each candidate attended to each behavior (dot attention: softmax
# weights averaged over heads; DIN: its activation weights). Models exported before
# explanations lack it; the service then refuses `explain` for that release, nothing else.
ATTENTION = "attention"

INPUT_NAMES = (CANDIDATES, BEHAVIORS, BEHAVIOR_MASK)  # every model has these
SIDE_INPUT_NAMES = (BEHAVIOR_GAP_BUCKETS, BEHAVIOR_GENERATED)  # models with value format 2
OUTPUT_NAMES = (SCORES,)  # every model has these
OPTIONAL_OUTPUT_NAMES = (ATTENTION,)

# Time-gap buckets: the gap from the previous behavior of the same user, log2-spaced in hours.
GAP_UNKNOWN = 0  # no timestamps (order-only data such as Scientific), or padding
GAP_FIRST = 1  # the user's first behavior: there is no previous one
GAP_RECENT = 2  # appended at request time (`recent_item_ids`): the store knows no gap
GAP_LOG_BASE = 3  # GAP_LOG_BASE + min(floor(log2(1 + hours)), GAP_LOG_MAX)
GAP_LOG_MAX = 16  # 2^16 hours ≈ 7.5 years: everything longer shares the last bucket
N_GAP_BUCKETS = GAP_LOG_BASE + GAP_LOG_MAX + 1


def gap_buckets(times: np.ndarray) -> np.ndarray:
    """Buckets (uint8) of one user's behaviors from their times in seconds, oldest first.

    The first behavior is GAP_FIRST; without timestamps (NaN) every behavior is GAP_UNKNOWN."""
    times = np.asarray(times, dtype=np.float64)
    out = np.full(len(times), GAP_UNKNOWN, dtype=np.uint8)
    if len(times) == 0 or np.isnan(times).all():
        return out
    out[0] = GAP_FIRST
    hours = np.maximum(np.diff(times), 0.0) / 3600.0
    logs = np.floor(np.log2(1.0 + np.nan_to_num(hours, nan=0.0)))
    buckets = GAP_LOG_BASE + np.minimum(logs, GAP_LOG_MAX).astype(np.int64)
    out[1:] = np.where(np.isnan(np.diff(times)), GAP_UNKNOWN, buckets).astype(np.uint8)
    return out
