"""Calibration of the ranker's click probabilities, fitted on validation only (DESIGN §3.4).

Scores are used as probabilities, and a BCE-trained ranker that early-stops on AUC can still be
overconfident (test LogLoss above the constant predictor's). Platt scaling refits the logit as
`scale * logit + bias` (temperature scaling: bias 0) by maximum likelihood on the validation
samples. `scale` is kept positive, so the transform is monotone and AUC / GAUC cannot change. The
result is written into the ScoringNet's `calibration` buffer: checkpoint, ONNX export and service
all carry it, and the exported `scores` stay probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from scipy.optimize import minimize

Method = Literal["platt", "temperature", "none"]
SCALE_BOUNDS = (1e-3, 1e3)  # scale > 0 keeps the order of the scores


@dataclass
class Calibration:
    method: str
    scale: float = 1.0
    bias: float = 0.0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits (float64)."""
        return np.asarray(logits, dtype=np.float64) * self.scale + self.bias

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(self.apply(logits))

    def to_dict(self) -> dict:
        return asdict(self)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Float64 logistic, stable for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def _nll(params: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    scale, bias = params
    z = scale * logits + bias
    loss = np.mean(np.logaddexp(0.0, z) - labels * z)  # mean BCE on logits
    residual = sigmoid(z) - labels
    return float(loss), np.array([np.mean(residual * logits), np.mean(residual)])


def check_method(method: str) -> None:
    """Fail before training, not after it, on a misspelt method."""
    if method not in get_args(Method):
        known = ", ".join(get_args(Method))
        raise ValueError(f"unknown calibration {method!r}; known: {known}")


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, method: Method = "platt"
) -> Calibration:
    """Maximum-likelihood (scale, bias) on validation logits and labels. Convex in (scale, bias);
    L-BFGS-B with scale bounded away from 0. No samples or method "none": the identity."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    check_method(method)
    if method == "none" or len(logits) == 0:
        return Calibration(method)
    bias_bounds = (None, None) if method == "platt" else (0.0, 0.0)
    result = minimize(
        _nll,
        x0=np.array([1.0, 0.0]),
        args=(logits, labels),
        jac=True,
        method="L-BFGS-B",
        bounds=[SCALE_BOUNDS, bias_bounds],
    )
    scale, bias = (float(v) for v in result.x)
    return Calibration(method, scale, bias)


def plot_reliability(panels: dict[str, dict[str, list[dict]]], path: Path, title: str) -> Path:
    """One reliability diagram per panel (e.g. per feature set), one curve per table in it
    (e.g. uncalibrated / calibrated, from `metrics.reliability`), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for label, table in curves.items():
            x = [row["mean_score"] for row in table]
            y = [row["positive_rate"] for row in table]
            ax.plot(x, y, marker="o", label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", title=name)
        ax.set_ylabel("observed positive rate")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
