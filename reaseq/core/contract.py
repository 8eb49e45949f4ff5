"""The scoring model's tensor contract, shared by export (offline) and the model backends (service).

The exported model takes dense vectors, not ids (DESIGN §3.4, "serving-friendly split"): one row of
the batch is one request, with C candidates scored against L behaviors, all vectors of width D.
"""

from __future__ import annotations

CANDIDATES = "candidates"  # float32 [B, C, D]: candidate item vectors
BEHAVIORS = "behaviors"  # float32 [B, L, D]: behavior item vectors, oldest first, right-aligned
BEHAVIOR_MASK = "behavior_mask"  # float32 [B, L]: 1 for a real behavior, 0 for padding
SCORES = "scores"  # float32 [B, C]: click probability per candidate

INPUT_NAMES = (CANDIDATES, BEHAVIORS, BEHAVIOR_MASK)
OUTPUT_NAMES = (SCORES,)
