"""Peers: published CTR models trained through adapters on our exact samples and features, so
their numbers sit in the same table as our ranker's (scored by reaseq.offline.metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reaseq.offline.calibration import Calibration


class PeerNotInstalled(ImportError):
    """A peer's library is missing; the message says what to install."""


@dataclass
class PeerResult:
    """What a peer run gives back, shaped like train.TrainResult where the two overlap."""

    peer: str  # e.g. "fuxictr-din"
    features: str  # "id" or "id+<kind>"
    # val, test (calibrated on val like our ranker), val_/test_uncalibrated: metrics.ctr_metrics
    metrics: dict[str, dict[str, float]]
    # uncalibrated probabilities per split; row i = row i of data.samples[split == s] (in order)
    predictions: dict[str, np.ndarray]
    best_epoch: int
    seconds: float  # training (fit with its per-epoch validation), not data writing or scoring
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: epoch, val_auc
    calibration: Calibration = field(default_factory=lambda: Calibration("none"))
    config: dict[str, Any] = field(default_factory=dict)  # what the peer was built with
    model: Any = None  # the trained library model (best weights)
