"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation").

With p = softmax(z / T) over C classes and t the labelled class of a sample:

    b  = [p_t, 1 − p_t]                      binary (target, all non-target) probabilities
    p̂_i = p_i / (1 − p_t),  i ≠ t            the distribution among the non-target classes

    TCKD = KL(b^T ‖ b^S)        NCKD = KL(p̂^T ‖ p̂^S)
    KD   = KL(p^T ‖ p^S) = TCKD + (1 − p^T_t) · NCKD          (the paper's Eq. 1-4)

Classical KD couples NCKD to the teacher's confidence (1 − p^T_t): the better the teacher knows a sample,
the less its "dark knowledge" counts. DKD weights the two parts freely:

    loss = CE(s, y) + w(progress) · T² · (α · TCKD + β · NCKD)

with the paper's linear warm-up w of the distillation terms (its CIFAR-100 setting: α = 1, β = 8, T = 4,
w = min(epoch / 20, 1) over 240 epochs). Here w = min(progress / warmup_fraction, 1) per step, progress
running from 0 to 1 over training: the paper's 20 of 240 epochs is 0.083, and a fraction keeps the ramp a
small part of tlrun's usually much shorter runs (20 epochs would be longer than most of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from tlrun.config.fields import bounded
from tlrun.config.methods import TeacherBase
from tlrun.errors import ConfigError
from tlrun.methods import DISTILL
from tlrun.methods.kd import DistillationLoss, KdConfig


@dataclass
class DkdConfig(KdConfig):
    """distill=dkd: CE + the target-class (TCKD, weight alpha) and non-target-class (NCKD, weight beta) KD terms."""

    # Not KD's mixing weight in [0, 1]: the CE term keeps weight 1 and α scales TCKD alone.
    alpha: float = bounded(1.0, low=0.0, help="Weight alpha of TCKD, the KL of the binary (target, non-target) "
                                              "probabilities (the CE term has weight 1)")
    beta: float = bounded(8.0, low=0.0, help="Weight beta of NCKD, the KL of the distributions over the "
                                             "non-target classes (8 in the paper's CIFAR-100 setting)")
    warmup_fraction: float = bounded(0.1, low=0.0, high=1.0,
                                     help="The KD terms ramp linearly from 0 to full weight over this fraction of "
                                          "training (the paper: 20 of 240 epochs); 0 = no warm-up")

    @staticmethod
    def check(cfg: DictConfig) -> None:
        TeacherBase.check(cfg)
        augment = cfg.data.augment
        if augment.mixup_alpha > 0 or augment.cutmix_alpha > 0:
            raise ConfigError("distill=dkd splits each sample's probabilities at its one labelled class, which "
                              "MixUp/CutMix's mixed labels do not have; set data.augment.mixup_alpha=0 "
                              "data.augment.cutmix_alpha=0")
        if cfg.distill.transfer_images:
            raise ConfigError("distill=dkd needs a label for every image of its KD terms (the target class), "
                              "and transfer images have none; set distill.transfer_images=0")


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample (N,): TCKD, NCKD (neither scaled by T²) and the teacher's target probability p^T_t.

    Computed in log space from log-sum-exps, so a confident teacher (p_t → 1) gives no 0 · log 0 terms:
    log(1 − p_t) = logsumexp(z_{i≠t}) − logsumexp(z) and log p̂_i = z_i − logsumexp(z_{j≠t})."""
    if student_logits.shape[1] < 2:
        raise ValueError("DKD needs at least two classes")
    target_mask = F.one_hot(targets, student_logits.shape[1]).bool()

    def log_parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # fp16/bf16 -> fp32
        everything = torch.logsumexp(z, dim=1)
        non_target = z.masked_fill(target_mask, float("-inf"))
        others = torch.logsumexp(non_target, dim=1)
        log_binary = torch.stack([z[target_mask] - everything, others - everything], dim=1)
        # 0 at the target instead of −inf: a where over −inf would leave NaN gradients behind.
        log_hat = torch.where(target_mask, torch.zeros_like(z), non_target - others.unsqueeze(1))
        return log_binary, log_hat

    student_binary, student_hat = log_parts(student_logits)
    teacher_binary, teacher_hat = log_parts(teacher_logits)
    tckd = (teacher_binary.exp() * (teacher_binary - student_binary)).sum(dim=1)
    nckd = (teacher_hat.exp() * (teacher_hat - student_hat)).masked_fill(target_mask, 0.0).sum(dim=1)
    return tckd, nckd, teacher_binary[:, 0].exp()


def dkd_warmup(progress: float, warmup_fraction: float) -> float:
    """The paper's linear warm-up of the KD terms: 0 at the start, 1 from ``warmup_fraction`` of training on."""
    return 1.0 if warmup_fraction <= 0 else min(1.0, max(0.0, progress) / warmup_fraction)


@DISTILL.register("dkd", DkdConfig, pipeline="kd")
class DecoupledKDLoss(DistillationLoss):
    """CE(s, y) + w(progress) · T² · (α · TCKD + β · NCKD), batch means (see the module docstring).

    ``tckd_loss`` and ``nckd_loss`` in ft_history.csv are the T²-scaled terms before α, β and the warm-up."""

    uses_progress = True  # the warm-up

    def __init__(self, temperature: float, alpha: float = 1.0, beta: float = 8.0, warmup_fraction: float = 0.1,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(temperature, alpha, label_smoothing)
        self.beta, self.warmup_fraction = float(beta), float(warmup_fraction)

    @classmethod
    def from_config(cls, cfg: Any, label_smoothing: float = 0.0) -> DecoupledKDLoss:
        return cls(cfg.temperature, cfg.alpha, cfg.beta, cfg.warmup_fraction, label_smoothing)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                progress: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        if targets.dim() != 1 or len(targets) != len(student_logits):
            raise ValueError("DKD needs one class index per image (no MixUp/CutMix labels, no transfer images)")
        tckd, nckd, _ = dkd_parts(student_logits, teacher_logits, targets, self.temperature)
        scale = self.temperature ** 2
        tckd, nckd = tckd.mean() * scale, nckd.mean() * scale
        ce = F.cross_entropy(student_logits, targets, label_smoothing=self.label_smoothing)
        warmup = dkd_warmup(progress, self.warmup_fraction)
        loss = ce + warmup * (self.alpha * tckd + self.beta * nckd)
        return loss, {"tckd_loss": tckd.item(), "nckd_loss": nckd.item(), "ce_loss": ce.item(), "dkd_warmup": warmup}

    def metrics(self) -> dict[str, Any]:
        return {"beta": self.beta, "warmup_fraction": self.warmup_fraction}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, warmup_fraction={self.warmup_fraction}"
