"""Conditional Domain Adversarial Networks (CDAN, CDAN+E).

Long, Cao, Wang & Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018.

DANN's discriminator sees the features f alone, so it can align the marginals while the class-conditional
distributions stay apart. CDAN conditions it on the classifier's prediction g = softmax(z): it sees the
multilinear map T⊗(f, g) = f ⊗ g (the outer product, flattened, d·C values f_i g_j), which captures the
cross-covariance of features and predictions. When d·C is large, the randomized multilinear map
T⊙(f, g) = (1/√d_r) (R_f f) ⊙ (R_g g), with fixed Gaussian R_f (d_r x d) and R_g (d_r x C), approximates
it in d_r dimensions (its inner products are unbiased estimates of T⊗'s). The paper uses T⊙ with
d_r = 1024 when d·C > 4096; ``adaptation.randomized=auto`` does the same.

CDAN+E (``adaptation.entropy=true``) weighs each sample by w = 1 + exp(−H(g)), H(g) = −Σ_c g_c log g_c,
so that confident (easy-to-transfer) examples count more in the adversarial game.

The game is DANN's: the same gradient reversal layer (with the shared λ schedule and source warm-up) in
front of the same discriminator (both imported from ``tlrun.methods.dann``). As in the paper's code and
TLlib, g is **detached** (in the map and in the entropy weight): the reversed gradient reaches the features
f only, and the classifier is shaped by the source cross-entropy, not by fooling the discriminator.

Two names for one method (``adaptation=cdan_e``) are not offered: a registered name is a module of its own
whose YAML defaults must equal its schema's (tests/test_methods.py), so CDAN+E is
``adaptation=cdan adaptation.entropy=true``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from tlrun.config.fields import bounded, choice
from tlrun.methods import ADAPTATION
from tlrun.methods.alignment import Alignment, DomainBatch, last_logged, prediction_entropy
from tlrun.methods.dann import (DannConfig, DomainDiscriminator, GradientReversalLayer,
                                warn_if_discriminator_collapsed)

if TYPE_CHECKING:
    import pandas as pd

# Above this many multilinear dimensions d·C the paper switches to the randomized map.
MAX_MULTILINEAR_DIM = 4096


def multilinear_map(features: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """T⊗(f, g): (N, d) features and (N, C) predictions -> (N, d·C), entry i·C + j = f_i g_j."""
    if features.dim() != 2 or predictions.dim() != 2 or features.shape[0] != predictions.shape[0]:
        raise ValueError(f"expected (N, d) features and (N, C) predictions, got {tuple(features.shape)} and "
                         f"{tuple(predictions.shape)}")
    return (features.unsqueeze(2) * predictions.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    """T⊙(f, g) = (1/√d_r) (R_f f) ⊙ (R_g g): (N, d), (N, C) -> (N, d_r).

    R_f (d x d_r) and R_g (C x d_r) are drawn once from N(0, 1) and never trained. They are buffers, so they
    are saved in checkpoints (a resumed run keeps the discriminator's input space) and broadcast by DDP.
    """

    def __init__(self, feature_dim: int, num_classes: int, output_dim: int = 1024,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if feature_dim < 1 or num_classes < 1 or output_dim < 1:
            raise ValueError(f"dimensions must be >= 1, got {feature_dim}, {num_classes}, {output_dim}")
        self.output_dim = output_dim
        self.register_buffer("random_features", torch.randn(feature_dim, output_dim, generator=generator))
        self.register_buffer("random_predictions", torch.randn(num_classes, output_dim, generator=generator))

    def forward(self, features: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        projected = (features @ self.random_features.to(features.dtype)) \
            * (predictions @ self.random_predictions.to(predictions.dtype))
        return projected / math.sqrt(self.output_dim)


def entropy_weights(predictions: torch.Tensor) -> torch.Tensor:
    """CDAN+E's w_i = 1 + exp(−H(g_i)), rescaled to mean 1 over the batch (as TLlib), so the weighted BCE
    Σ w_i ℓ_i / Σ w_i keeps the scale of the plain mean."""
    weights = 1.0 + torch.exp(-prediction_entropy(predictions))
    return weights * (weights.shape[0] / weights.sum())


class ConditionalDomainAdversarialLoss(nn.Module):
    """CDAN's domain loss: BCE of D(R_λ(T(f, g))) against 1 = source, 0 = target, over the joint batch,

        L = −1/Σw [ Σ_{i∈S} w_i log D(T(f_i, g_i)) + Σ_{j∈T} w_j log(1 − D(T(f_j, g_j))) ]

    with g = softmax(logits) detached, T the multilinear map T⊗ or the randomized T⊙, w_i = 1 for CDAN and
    the normalised 1 + exp(−H(g_i)) for CDAN+E. Add it *unweighted*: the gradient reversal layer R_λ scales
    the gradient reaching the features by −λ, the discriminator gets the plain one (as in DANN).
    """

    def __init__(self, feature_dim: int, num_classes: int, entropy_conditioning: bool = False,
                 randomized: bool = False, randomized_dim: int = 1024, hidden: int = 1024, depth: int = 2,
                 dropout: float = 0.5, batch_norm: bool = True, activation: str = "relu", max_weight: float = 1.0,
                 gamma: float = 10.0, schedule: str = "dann", generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.entropy_conditioning = entropy_conditioning
        self.map = RandomizedMultilinearMap(feature_dim, num_classes, randomized_dim, generator) if randomized \
            else None
        in_features = randomized_dim if randomized else feature_dim * num_classes
        self.grl = GradientReversalLayer(max_weight=max_weight, gamma=gamma, schedule=schedule)
        self.discriminator = DomainDiscriminator(in_features, hidden=hidden, depth=depth, dropout=dropout,
                                                 batch_norm=batch_norm, activation=activation)

    def set_progress(self, progress: Optional[float]) -> None:
        """Training progress p in [0, 1] for the GRL's λ schedule (None: the warm-up, λ = 0)."""
        self.grl.set_progress(progress)

    def conditioned(self, features: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        """The discriminator's input T(f, g)."""
        return self.map(features, predictions) if self.map is not None else multilinear_map(features, predictions)

    def forward(self, source_features: torch.Tensor, source_logits: torch.Tensor, target_features: torch.Tensor,
                target_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The (weighted) mean BCE and ``{"domain_acc", "lambda", "discriminator_active"}``."""
        features = torch.cat([source_features, target_features])
        # g detached (the paper's code, TLlib): the game trains the features and the discriminator only.
        class_logits = torch.cat([source_logits, target_logits]).detach()
        if class_logits.dtype in (torch.float16, torch.bfloat16):  # the entropy of half-precision g is coarse
            class_logits = class_logits.float()
        predictions = F.softmax(class_logits, dim=1)
        logits = self.discriminator(self.grl(self.conditioned(features, predictions.to(features.dtype))))
        labels = torch.cat([logits.new_ones(source_features.shape[0]), logits.new_zeros(target_features.shape[0])])
        if self.entropy_conditioning:
            weights = entropy_weights(predictions).to(logits.dtype)
            per_sample = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            loss = (weights * per_sample).sum() / weights.sum()
        else:
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        with torch.no_grad():
            accuracy = ((logits > 0).to(labels.dtype) == labels).float().mean().item()
        return loss, {"domain_acc": accuracy, "lambda": self.grl.lambda_,
                      "discriminator_active": self.discriminator.active_fraction}


def uses_randomized_map(randomized: Union[bool, str], feature_dim: int, num_classes: int) -> bool:
    """``adaptation.randomized``: true, false, or auto = the paper's rule (randomized when d·C > 4096)."""
    if randomized == "auto":
        return feature_dim * num_classes > MAX_MULTILINEAR_DIM
    return bool(randomized)


@dataclass
class CdanConfig(DannConfig):
    """adaptation=cdan: DANN's game on the multilinear map of features and predictions (entropy=true: CDAN+E)."""

    # An AlignmentBase through DannConfig: the discriminator keys are DANN's own fields, not a copy.
    entropy: bool = field(default=False, metadata={
        "help": "CDAN+E: weigh each sample's domain loss by 1 + exp(-H(g)) of its prediction g"})
    # Not a str: adaptation.randomized=true parses as a boolean.
    randomized: Union[bool, str] = choice("auto", ("auto", True, False),
                                          help="Randomized multilinear map (R_f f) * (R_g g) / sqrt(randomized_dim) "
                                               "instead of the d*C outer product; auto = when d*C > 4096 (the "
                                               "paper's rule)")
    randomized_dim: int = bounded(1024, low=1, help="Output size d_r of the randomized multilinear map")


@ADAPTATION.register("cdan", CdanConfig)
class Cdan(Alignment):
    """CDAN as a step contribution: L of the joint batch's T(f, g) through the GRL, added unweighted."""

    loss_name = "domain_loss"

    def __init__(self, cfg: Any, feature_dim: int, num_classes: int) -> None:
        super().__init__(cfg, feature_dim, num_classes)
        self.lr_mult = float(cfg.discriminator_lr_mult)
        self.randomized = uses_randomized_map(cfg.randomized, feature_dim, num_classes)
        # Its own stream, seeded by the run's seed (seed=): drawing the matrices does not shift what the
        # global generator gives the discriminator's initialisation.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        self.adversarial = ConditionalDomainAdversarialLoss(
            feature_dim, num_classes, entropy_conditioning=cfg.entropy, randomized=self.randomized,
            randomized_dim=cfg.randomized_dim, hidden=cfg.discriminator_width, depth=cfg.discriminator_depth,
            dropout=cfg.discriminator_dropout, batch_norm=cfg.discriminator_batch_norm,
            activation=cfg.discriminator_activation, max_weight=cfg.weight, gamma=cfg.gamma,
            schedule=cfg.schedule, generator=generator)

    def forward(self, source: DomainBatch, target: DomainBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        self.adversarial.set_progress(self.aligned_progress(progress))  # None during the warm-up
        return self.adversarial(source.features, source.logits, target.features, target.logits)

    def metrics(self, history: pd.DataFrame) -> dict[str, Any]:
        """The state of the adversarial game at the end, and which map the discriminator saw."""
        return {"domain_acc_last": last_logged(history, "domain_acc"),
                "discriminator_active_last": last_logged(history, "discriminator_active"),
                "cdan_map": "randomized" if self.randomized else "multilinear"}

    def check_history(self, history: pd.DataFrame) -> None:
        super().check_history(history)
        if self.cfg.discriminator_activation == "relu":
            warn_if_discriminator_collapsed(history)
