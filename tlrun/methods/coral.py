"""Deep CORAL: correlation alignment of source and target features.

Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016 Workshops.

With D_S (n_S x d) and D_T (n_T x d) the batch features of each domain and 1 a column of ones,

    C = 1 / (n - 1) · (Dᵀ D − 1 / n · (1ᵀ D)ᵀ (1ᵀ D))        (the unbiased feature covariance)

    ℓ_CORAL = 1 / (4 d²) · ‖C_S − C_T‖²_F                     (Eq. 1)

and the network minimises ℓ_CLASS + λ · ℓ_CORAL (Eq. 5). The paper keeps λ constant, chosen so that both
terms are of a size at the end of training; ``adaptation.schedule=constant`` does that, the default ramps
λ like DANN's schedule (the same ``weight``/``gamma`` keys as every alignment method). No parameters of
its own: the loss only shapes the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlrun.config.methods import AlignmentBase
from tlrun.methods import ADAPTATION
from tlrun.methods.alignment import Alignment, DomainBatch


def feature_covariance(features: torch.Tensor) -> torch.Tensor:
    """The unbiased (n - 1) covariance of (n, d) features, computed in float32 at least."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"CORAL needs (n >= 2, d) features per domain, got shape {tuple(features.shape)}")
    features = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    n = features.shape[0]
    column_sums = features.sum(dim=0, keepdim=True)
    return (features.T @ features - column_sums.T @ column_sums / n) / (n - 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ_CORAL = ‖C_S − C_T‖²_F / (4 d²) between (n_S, d) source and (n_T, d) target features."""
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"expected (n_S, d) and (n_T, d) features, got {tuple(source.shape)} and {tuple(target.shape)}")
    d = source.shape[1]
    return (feature_covariance(source) - feature_covariance(target)).pow(2).sum() / (4 * d * d)


class CoralLoss(nn.Module):
    """:func:`coral_loss` as a module."""

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return coral_loss(source, target)


@dataclass
class CoralConfig(AlignmentBase):
    """adaptation=coral: the alignment keys alone (weight = λ, schedule, gamma)."""


@ADAPTATION.register("coral", CoralConfig)
class Coral(Alignment):
    """Deep CORAL as a step contribution: λ_p x ℓ_CORAL(source features, target features)."""

    loss_name = "coral_loss"

    def __init__(self, cfg: Any, feature_dim: int, num_classes: int) -> None:
        super().__init__(cfg, feature_dim, num_classes)
        self.coral = CoralLoss()

    def forward(self, source: DomainBatch, target: DomainBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.weight(progress)
        return weight * self.coral(source.features, target.features), {"lambda": weight}
