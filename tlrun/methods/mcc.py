"""Minimum Class Confusion (MCC).

Jin, Wang, Long & Wang, "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020.

MCC needs no discriminator and no source features: it makes the classifier's predictions on an unlabelled
target batch less *confused*, i.e. less ready to give two classes to the same samples at once. For a target
batch of B logits z (B x C):

    Ŷ = softmax(z / T)                                   (temperature rescaling, T = 2.5, Eq. 1)
    H_i = −Σ_j Ŷ_ij log Ŷ_ij                             (the entropy of sample i)
    W_ii = B (1 + exp(−H_i)) / Σ_i' (1 + exp(−H_i'))      (confident samples weigh more, Eq. 3-4)
    C = Ŷᵀ W Ŷ                                           (class correlation, C x C, Eq. 5)
    C̃_jj' = C_jj' / Σ_j'' C_j''j'                        (category normalisation: columns sum to 1, Eq. 6)
    L_MCC = 1/|C| Σ_j Σ_j'≠j |C̃_jj'|                     (mean cross-class confusion, Eq. 7)

L_MCC is 0 when each sample is one-hot and every class is predicted by some sample of the batch, and
(C − 1)/C for uniform predictions. As in the paper (and TLlib), the weights W are constants of the step:
the gradient flows through Ŷ only, not through the weighting. A class that no sample predicts still gets a
normalised column: its tiny correlations with the predicted classes are scaled up to sum to 1, so a batch
that covers fewer classes than C keeps a loss of about (number of absent classes)/C; that is the paper's
definition, kept as is (only an exact 0/0 is guarded, it counts as 0).

Two ways to use it:

- ``adaptation=mcc``: MCC is the method, λ_p x L_MCC with the shared ``weight``/``schedule``/warm-up keys
  (the paper's trade-off is weight=1 held constant: ``adaptation.schedule=constant``).
- ``adaptation.mcc_weight=μ`` on any other alignment method (``adaptation=dann adaptation.mcc_weight=1``):
  a regulariser μ x L_MCC of the target logits, added once by ``AdaptationStep`` (the ``mcc_loss``
  column), 0 during the method's warm-up and constant after it. The key and ``mcc_temperature`` are in
  ``AlignmentBase``, so every alignment method has them; under ``adaptation=mcc`` a non-zero
  ``mcc_weight`` is refused rather than counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from tlrun.config.methods import AlignmentBase
from tlrun.errors import ConfigError
from tlrun.methods import ADAPTATION
from tlrun.methods.alignment import Alignment, DomainBatch, prediction_entropy


def confidence_weights(predictions: torch.Tensor) -> torch.Tensor:
    """The diagonal of W: B (1 + exp(−H_i)) / Σ_i' (1 + exp(−H_i')), detached (constants of the step)."""
    weights = 1.0 + torch.exp(-prediction_entropy(predictions.detach()))
    return weights * (weights.shape[0] / weights.sum())


def class_confusion(predictions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """C = Ŷᵀ W Ŷ of (B, C) predictions and the (B,) diagonal of W."""
    return (predictions * weights.unsqueeze(1)).T @ predictions


def category_normalize(confusion: torch.Tensor) -> torch.Tensor:
    """C̃_jj' = C_jj' / Σ_j'' C_j''j' (each column sums to 1)."""
    # Only an exact 0 column (a class whose probability underflowed on every sample) needs the guard: 0/0 -> 0.
    return confusion / confusion.sum(dim=0, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """L_MCC of a (B, C) batch of target logits (computed in float32 at least)."""
    if logits.dim() != 2:
        raise ValueError(f"MCC needs (B, C) logits, got shape {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    predictions = F.softmax(logits / temperature, dim=1)
    normalized = category_normalize(class_confusion(predictions, confidence_weights(predictions)))
    num_classes = logits.shape[1]
    return (normalized.sum() - normalized.diagonal().sum()) / num_classes  # entries >= 0: |C̃| = C̃


class MinimumClassConfusionLoss(nn.Module):
    """:func:`mcc_loss` with its temperature T: L_MCC = 1/|C| Σ_j Σ_j'≠j C̃_jj' of the target logits."""

    def __init__(self, temperature: float = 2.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, target_logits: torch.Tensor) -> torch.Tensor:
        return mcc_loss(target_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@dataclass
class MccConfig(AlignmentBase):
    """adaptation=mcc: Minimum Class Confusion of the target predictions (weight = trade-off, mcc_temperature = T)."""

    @staticmethod
    def check(cfg: DictConfig) -> None:
        if float(cfg.adaptation.mcc_weight) != 0:
            raise ConfigError(f"adaptation.mcc_weight={cfg.adaptation.mcc_weight} adds MCC on top of another method; "
                              "with adaptation=mcc the trade-off is adaptation.weight (leave mcc_weight at 0)")


@ADAPTATION.register("mcc", MccConfig)
class Mcc(Alignment):
    """MCC as a step contribution: λ_p x L_MCC(target logits); the features are not used."""

    loss_name = "mcc_loss"

    def __init__(self, cfg: Any, feature_dim: int, num_classes: int) -> None:
        super().__init__(cfg, feature_dim, num_classes)
        self.mcc = MinimumClassConfusionLoss(cfg.mcc_temperature)

    def forward(self, source: DomainBatch, target: DomainBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.weight(progress)
        return weight * self.mcc(target.logits), {"lambda": weight}
