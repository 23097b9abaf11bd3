"""Domain-Adversarial Neural Networks (DANN).

Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand & Lempitsky,
"Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016.

The feature extractor G_f is trained to *maximise* the loss of a domain classifier G_d while G_d
minimises it. The gradient reversal layer (GRL, Sec. 4.2) makes this a single minimisation: it is the
identity in the forward pass and multiplies the gradient by -lambda in the backward pass, so G_d receives
the ordinary gradient of the domain loss and G_f receives it reversed and scaled.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tlrun.config.fields import bounded, choice
from tlrun.config.methods import AlignmentBase
from tlrun.methods import ADAPTATION
from tlrun.methods.alignment import Alignment, DomainBatch, dann_lambda, last_logged

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SCHEDULES = ("dann", "constant")
ACTIVATIONS = ("relu", "leaky_relu")
# DCGAN's slope (Radford et al. 2016). A leaky unit still passes gradient when its input is negative, so the
# features cannot silence the discriminator by pushing every hidden pre-activation below zero.
LEAKY_SLOPE = 0.2


class GradientReversal(torch.autograd.Function):
    """R_lambda(x) = x forward; dR/dx = -lambda * I backward (Ganin et al. 2016, Sec. 4.2)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        # A new tensor object (same storage) so the output carries this Function's grad_fn.
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * -ctx.lambda_, None


class GradientReversalLayer(nn.Module):
    """GRL that owns its coefficient schedule.

    ``schedule="dann"``: lambda follows :func:`dann_lambda` of the training progress p in [0, 1]
    (fraction of training iterations done), set with :meth:`set_progress`.
    ``schedule="constant"``: lambda = ``max_weight`` throughout.
    """

    def __init__(self, max_weight: float = 1.0, gamma: float = 10.0, schedule: str = "dann") -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not max_weight >= 0:
            raise ValueError(f"max_weight must be >= 0, got {max_weight}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.max_weight = float(max_weight)
        self.gamma = float(gamma)
        self.schedule = schedule
        self.progress = 0.0
        self.paused = False  # the method's warm-up: lambda = 0 whatever the schedule

    def set_progress(self, progress: Optional[float]) -> None:
        """Set training progress p (clamped to [0, 1]); None pauses the layer (a method's warm-up: lambda = 0)."""
        self.paused = progress is None
        progress = 0.0 if progress is None else progress
        if not math.isfinite(progress):
            raise ValueError(f"progress must be finite, got {progress}")
        self.progress = min(max(float(progress), 0.0), 1.0)

    @property
    def lambda_(self) -> float:
        """Current reversal coefficient lambda."""
        if self.paused:
            return 0.0
        if self.schedule == "constant":
            return self.max_weight
        return dann_lambda(self.progress, self.max_weight, self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GradientReversal.apply(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"max_weight={self.max_weight}, gamma={self.gamma}, schedule={self.schedule!r}"


class DomainDiscriminator(nn.Module):
    """Domain classifier G_d on pooled backbone features: one logit, > 0 means "source".

    ``depth`` hidden blocks of Linear -> BatchNorm1d -> activation -> Dropout, then Linear(hidden, 1).
    The default width/depth follow the domain classifier of Ganin et al. 2016 (Sec. 5.2.2:
    x -> 1024 -> 1024 -> domain), with a single logit for BCE, and BatchNorm added for stability.
    Against the reversed gradient the features can drive the hidden ReLUs of a plain (BatchNorm-free)
    discriminator negative one by one; with all of them off it outputs a constant (domain accuracy exactly
    0.5, loss ln 2), which looks like the game's equilibrium but passes no gradient to the features.
    ``active_fraction`` after a forward tells how many first-layer units fired on the batch;
    ``activation="leaky_relu"`` (slope 0.2) gives units that cannot die.
    ``batch_norm=False, dropout=0`` give the paper's plain Linear -> ReLU blocks.
    """

    def __init__(self, in_features: int, hidden: int = 1024, depth: int = 2, dropout: float = 0.5,
                 batch_norm: bool = True, activation: str = "relu") -> None:
        super().__init__()
        if in_features < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"in_features, hidden and depth must be >= 1, got {in_features}, {hidden}, {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE) if activation == "leaky_relu" else nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.active_fraction = float("nan")
        first_activation = next(m for m in layers if isinstance(m, (nn.ReLU, nn.LeakyReLU)))
        first_activation.register_forward_hook(self._record_active_fraction)

    def _record_active_fraction(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        with torch.no_grad():  # a unit is active if it fires (> 0) on at least one sample of the batch
            self.active_fraction = (output > 0).any(dim=0).float().mean().item()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, in_features) -> (N,) domain logits."""
        return self.net(features).squeeze(1)


class DomainAdversarialLoss(nn.Module):
    """DANN domain loss L_d: BCE of G_d(R_lambda(features)) against domain labels 1 = source, 0 = target.

    Add the returned loss to the label-prediction loss *unweighted*: the trade-off lambda is applied by
    the GRL to the gradient reaching the features only, while the discriminator's own parameters get
    the plain gradient (Ganin et al. 2016, Sec. 4.2).
    """

    def __init__(self, in_features: int, hidden: int = 1024, depth: int = 2, dropout: float = 0.5,
                 max_weight: float = 1.0, gamma: float = 10.0, schedule: str = "dann",
                 batch_norm: bool = True, activation: str = "relu") -> None:
        super().__init__()
        self.grl = GradientReversalLayer(max_weight=max_weight, gamma=gamma, schedule=schedule)
        self.discriminator = DomainDiscriminator(in_features, hidden=hidden, depth=depth, dropout=dropout,
                                                 batch_norm=batch_norm, activation=activation)

    def set_progress(self, progress: Optional[float]) -> None:
        """Forward training progress p in [0, 1] to the GRL's lambda schedule (None: paused, lambda = 0)."""
        self.grl.set_progress(progress)

    @property
    def lambda_(self) -> float:
        return self.grl.lambda_

    def forward(self, source_features: torch.Tensor,
                target_features: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean BCE domain loss over the joint batch and ``{"domain_acc", "lambda", "discriminator_active"}``.

        Source and target batches may have different sizes; each sample counts once in the mean.
        """
        if source_features.dim() != 2 or target_features.dim() != 2:
            raise ValueError("expected (N, D) feature tensors, got shapes "
                             f"{tuple(source_features.shape)} and {tuple(target_features.shape)}")
        features = torch.cat([source_features, target_features], dim=0)
        logits = self.discriminator(self.grl(features))
        # Built from the features so they follow them onto any device/dtype (a CPU float32 label
        # tensor would be silently promoted on CPU but fails on CUDA).
        labels = torch.cat([features.new_ones(source_features.shape[0]),
                            features.new_zeros(target_features.shape[0])])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        with torch.no_grad():
            accuracy = ((logits > 0).to(labels.dtype) == labels).float().mean().item()
        return loss, {"domain_acc": accuracy, "lambda": self.grl.lambda_,
                      "discriminator_active": self.discriminator.active_fraction}


@dataclass
class DannConfig(AlignmentBase):
    """adaptation=dann: the domain discriminator and its optimisation (weight/schedule/gamma drive the GRL)."""

    discriminator_width: int = bounded(1024, low=1, help="Hidden units of the domain discriminator's MLP")
    discriminator_depth: int = bounded(2, low=1, help="Hidden blocks (Linear-BN-activation-Dropout) of the discriminator")
    # TLlib uses dropout only without BatchNorm.
    discriminator_dropout: float = bounded(0.5, low=0.0, high=0.9,
                                           help="Dropout after each hidden block of the discriminator (0 = none)")
    discriminator_batch_norm: bool = field(default=True, metadata={
        "help": "BatchNorm1d in the discriminator's hidden blocks (the DANN paper's classifier has none)"})
    # Without BatchNorm the features can switch ReLU units off (ft_history's discriminator_active; a collapse
    # is warned about); leaky units cannot die.
    discriminator_activation: str = choice("relu", ACTIVATIONS,
                                           help="Hidden activation of the discriminator: relu (the paper's) or "
                                                "leaky_relu (slope 0.2, units cannot die)")
    discriminator_lr_mult: float = bounded(1.0, low=0.0, low_open=True,
                                           help="Discriminator learning rate = train.lr x this (its own parameter "
                                                "group, same schedule)")


# Below this fraction of first-layer units firing, the discriminator is (nearly) a constant function.
COLLAPSED_DISCRIMINATOR = 0.1


def warn_if_discriminator_collapsed(history: pd.DataFrame) -> None:
    """One warning when a ReLU discriminator went silent in the last epoch (see DomainDiscriminator)."""
    active = last_logged(history, "discriminator_active")
    if active is not None and active < COLLAPSED_DISCRIMINATOR:
        log.warning("The domain discriminator collapsed: %.0f%% of its hidden units fire in the last epoch, so it "
                    "outputs a near-constant and passes almost no gradient to the features (domain_acc near 0.5 here "
                    "is not an equilibrium). Use adaptation.discriminator_activation=leaky_relu or "
                    "adaptation.discriminator_batch_norm=true.", 100 * active)


@ADAPTATION.register("dann", DannConfig)
class Dann(Alignment):
    """DANN as a step contribution: L_d of the joint source + target features through the GRL, added
    unweighted (the GRL applies lambda_p to the gradient reaching the features)."""

    loss_name = "domain_loss"

    def __init__(self, cfg: Any, feature_dim: int, num_classes: int) -> None:
        super().__init__(cfg, feature_dim, num_classes)
        self.lr_mult = float(cfg.discriminator_lr_mult)
        self.adversarial = DomainAdversarialLoss(feature_dim, hidden=cfg.discriminator_width,
                                                 depth=cfg.discriminator_depth, dropout=cfg.discriminator_dropout,
                                                 batch_norm=cfg.discriminator_batch_norm,
                                                 activation=cfg.discriminator_activation, max_weight=cfg.weight,
                                                 gamma=cfg.gamma, schedule=cfg.schedule)

    def forward(self, source: DomainBatch, target: DomainBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        self.adversarial.set_progress(self.aligned_progress(progress))  # None during the warm-up
        return self.adversarial(source.features, target.features)

    def metrics(self, history: pd.DataFrame) -> dict[str, Any]:
        """The state of the adversarial game at the end (label-free)."""
        return {"domain_acc_last": last_logged(history, "domain_acc"),
                "discriminator_active_last": last_logged(history, "discriminator_active")}

    def check_history(self, history: pd.DataFrame) -> None:
        super().check_history(history)
        # Leaky units keep a gradient when they do not fire, so only a ReLU discriminator can go silent.
        if self.cfg.discriminator_activation == "relu":
            warn_if_discriminator_collapsed(history)
