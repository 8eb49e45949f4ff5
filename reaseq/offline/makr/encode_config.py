"""Settings of `makr encode`, apart from the encoder so the pipeline config can name them without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EncodeConfig:
    dim: int = 64
    hidden: int = 256
    window: int = 3  # co-interaction window, in positions of the train-period log
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 2e-3
    temperature: float = 0.1
    instance_weight: float = 1.0  # hybrid only
    view_keep: float = 0.5  # hybrid instance view: share of words kept
    seed: int = 0
    # what of the knowledge record is embedded (KNOWLEDGE_INPUTS): the card alone, plus the
    # relation agent's complement/substitute kinds, plus the item's own raw text after them.
    # The last is the default: best on complete Office knowledge (README, MAKR section).
    knowledge_input: str = "card+relations+text"
    # how the MiniLM embedding becomes d = `dim`: the projector trained contrastively on
    # train-period co-interactions, or the same PCA as `text` (isolates what the knowledge adds)
    projector: str = "contrastive"

    def __post_init__(self) -> None:
        if self.projector not in PROJECTORS:
            known = ", ".join(PROJECTORS)
            raise ValueError(f"unknown projector {self.projector!r}; known: {known}")
        if self.knowledge_input not in KNOWLEDGE_INPUTS:
            known = ", ".join(KNOWLEDGE_INPUTS)
            raise ValueError(f"unknown knowledge_input {self.knowledge_input!r}; known: {known}")


KNOWLEDGE_INPUTS = ("card", "card+relations", "card+relations+text")
PROJECTORS = ("contrastive", "pca")
