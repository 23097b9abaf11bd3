"""Multi-kernel maximum mean discrepancy (MK-MMD).

Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation Networks" (DAN), ICML 2015;
Gretton, Borgwardt, Rasch, Schoelkopf & Smola, "A Kernel Two-Sample Test", JMLR 13, 2012.

Kernel: k(x, y) = sum_u exp(-||x - y||^2 / (multiplier_u * base)), a family of Gaussian kernels with equal
weights beta_u = 1 (DAN learns beta; fixed equal weights are the common practical choice). ``base`` is the mean
squared distance over pairs of distinct points of the joint batch (source and target together), detached so the
bandwidth is a statistic of the batch and not something the features can be optimised against.
The default multipliers (0.25, 0.5, 1, 2, 4) are the usual kernel_num=5, kernel_mul=2 family centred on base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Sequence

import torch
from torch import nn

from tlrun.config.fields import choice
from tlrun.config.methods import AlignmentBase
from tlrun.methods import ADAPTATION
from tlrun.methods.alignment import Alignment, DomainBatch

DEFAULT_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
ESTIMATORS = ("quadratic", "linear")


def _check_inputs(source: torch.Tensor, target: torch.Tensor, multipliers: Sequence[float], estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError("expected (N, D) and (M, D) feature tensors, got shapes "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")
    if source.shape[0] == 0 or target.shape[0] == 0:
        raise ValueError("MMD needs at least one source and one target sample")
    if len(multipliers) == 0 or any(not m > 0 for m in multipliers):
        raise ValueError(f"multipliers must be a non-empty sequence of positive numbers, got {tuple(multipliers)}")


def joint_bandwidth(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance over pairs of distinct points of source ∪ target (detached scalar)."""
    joint = torch.cat([source, target]).detach()
    n = joint.shape[0]
    if n < 2:
        return joint.new_ones(())
    # sum_{i,j} ||z_i - z_j||^2 = 2n * sum_i ||z_i - mean||^2: O(n d), so the linear estimator stays linear,
    # and centring avoids the cancellation of the ||a||^2 + ||b||^2 - 2ab expansion.
    spread = (joint - joint.mean(dim=0)).pow(2).sum()
    base = 2.0 * spread / (n - 1)
    # Identical points: any bandwidth gives k = 1 everywhere; avoid 0/0.
    return base.clamp_min(torch.finfo(base.dtype).tiny)


def _kernel(sq_dist: torch.Tensor, base: torch.Tensor, multipliers: Sequence[float]) -> torch.Tensor:
    return sum(torch.exp(-sq_dist / (base * m)) for m in multipliers)


def _pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    sq = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.T
    return sq.clamp_min(0.0)


def mk_mmd(source: torch.Tensor, target: torch.Tensor, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
           estimator: str = "quadratic") -> torch.Tensor:
    """Squared MK-MMD between (N, D) source and (M, D) target features (DAN, Long et al. 2015).

    ``"quadratic"``: the biased V-statistic of Gretton et al. 2012,
    mean(K_ss) + mean(K_tt) - 2 mean(K_st) with the diagonals included. Always >= 0 and works for N != M;
    O((N + M)^2) time.

    ``"linear"``: the linear-time statistic of Gretton et al. 2012 (Sec. 6), used by DAN:
    with n = the largest even number <= min(N, M), pairs (x_{2i-1}, x_{2i}) and (y_{2i-1}, y_{2i}),
    mean_i [k(x_{2i-1}, x_{2i}) + k(y_{2i-1}, y_{2i}) - k(x_{2i-1}, y_{2i}) - k(x_{2i}, y_{2i-1})].
    Unbiased for a fixed kernel (it can be negative); extra samples beyond n are ignored.
    """
    _check_inputs(source, target, multipliers, estimator)
    base = joint_bandwidth(source, target)
    if estimator == "quadratic":
        n = source.shape[0]
        joint = torch.cat([source, target])
        # Distances are translation-invariant; centring on the detached mean keeps float32 precision.
        joint = joint - joint.detach().mean(dim=0)
        kernel = _kernel(_pairwise_sq_dist(joint, joint), base, multipliers)
        return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2.0 * kernel[:n, n:].mean()

    n = min(source.shape[0], target.shape[0]) // 2 * 2
    if n < 2:
        raise ValueError("the linear MMD estimator needs at least 2 source and 2 target samples")
    x1, x2 = source[0:n:2], source[1:n:2]
    y1, y2 = target[0:n:2], target[1:n:2]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _kernel((a - b).pow(2).sum(1), base, multipliers)

    return (k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)).mean()


class MultiKernelMMDLoss(nn.Module):
    """MK-MMD between source and target features as a loss (DAN, Long et al. 2015); see :func:`mk_mmd`."""

    def __init__(self, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, estimator: str = "quadratic") -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if len(multipliers) == 0 or any(not m > 0 for m in multipliers):
            raise ValueError(f"multipliers must be a non-empty sequence of positive numbers, got {tuple(multipliers)}")
        self.multipliers = tuple(float(m) for m in multipliers)
        self.estimator = estimator

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mk_mmd(source, target, self.multipliers, self.estimator)

    def extra_repr(self) -> str:
        return f"multipliers={self.multipliers}, estimator={self.estimator!r}"


@dataclass
class MmdConfig(AlignmentBase):
    """adaptation=mmd: the kernel family and the estimator of the MK-MMD loss."""

    mmd_multipliers: List[float] = field(default_factory=lambda: list(DEFAULT_MULTIPLIERS), metadata={
        "validator": lambda v: None if v and all(x > 0 for x in v) else
        "give one or more positive bandwidth multipliers, e.g. adaptation.mmd_multipliers=[0.5,1,2]",
        "help": "Gaussian kernel bandwidths = multiplier x the batch's mean pairwise squared distance (DAN: 5 kernels)"})
    mmd_estimator: str = choice("quadratic", ESTIMATORS,
                                help="quadratic (biased V-statistic, any batch sizes) or linear (Gretton's unbiased "
                                     "linear-time estimate)")


@ADAPTATION.register("mmd", MmdConfig)
class Mmd(Alignment):
    """DAN as a step contribution: weight_p x MK-MMD(source features, target features)."""

    loss_name = "mmd_loss"

    def __init__(self, cfg: Any, feature_dim: int, num_classes: int) -> None:
        super().__init__(cfg, feature_dim, num_classes)
        self.mmd = MultiKernelMMDLoss(multipliers=tuple(cfg.mmd_multipliers), estimator=cfg.mmd_estimator)

    def forward(self, source: DomainBatch, target: DomainBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.weight(progress)
        return weight * self.mmd(source.features, target.features), {"lambda": weight}
