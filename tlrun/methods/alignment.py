"""What a domain-adaptation method contributes to a training step of the adaptation pipeline.

A method subclasses :class:`Alignment` (an ``nn.Module``: its own layers, e.g. DANN's discriminator,
train beside the model in their own parameter group, are checkpointed and wrapped by DDP with it),
and registers itself: ``@ADAPTATION.register("coral", CoralConfig)``. Each step hands it the source
and the target half of one joint forward pass, features **and** logits, and the training progress
p in [0, 1]; it returns its loss (already weighted) and per-step diagnostics, which become
``ft_history.csv`` columns (epoch means). After training it may add ``metrics.json`` entries and
warn about the run it saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd


def dann_lambda(progress: float, max_weight: float = 1.0, gamma: float = 10.0) -> float:
    """lambda_p = max_weight * (2 / (1 + exp(-gamma * p)) - 1) (Ganin et al. 2016, Sec. 5.2.2).

    Starts at 0 so that the noisy early discriminator does not disturb the features, and approaches
    ``max_weight`` as p -> 1 (p = 1 gives max_weight * tanh(gamma / 2), 0.99991 * max_weight for gamma = 10).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return max_weight * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


@dataclass
class DomainBatch:
    """One domain's half of a step's joint forward pass."""

    features: torch.Tensor  # (N, D): what adaptation.features / feature_layer select (pooled features or logits)
    logits: torch.Tensor  # (N, C): the classifier's output


class Alignment(nn.Module):
    """Base of a domain-adaptation method. ``cfg`` is its config node (``adaptation.*``)."""

    loss_name = "domain_loss"  # the ft_history.csv column of the method's loss
    lr_mult = 1.0  # learning rate of the method's own parameters = train.lr x this

    def __init__(self, cfg: Any, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg

    def weight(self, progress: float) -> float:
        """The trade-off at progress p: adaptation.weight, ramped by the DANN schedule unless constant."""
        if self.cfg.schedule == "constant":
            return float(self.cfg.weight)
        return dann_lambda(progress, self.cfg.weight, self.cfg.gamma)

    def forward(self, source: DomainBatch, target: DomainBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted domain loss and per-step scalars for ft_history.csv."""
        raise NotImplementedError

    def metrics(self, history: pd.DataFrame) -> dict[str, Any]:
        """Extra metrics.json entries from the finished run's history (label-free diagnostics)."""
        return {}

    def check_history(self, history: pd.DataFrame) -> None:
        """Warn (one line) about a run whose history shows the method failed."""
