"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    loss = α · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − α) · CE(s, y)

α weights the *soft* (teacher) term, as in tlrun's seeds; torchdistill's ``alpha`` weights the hard
term instead. T² keeps the soft term's gradients on the scale of the hard term when T changes.
Hinton's transfer set: rows of the batch beyond the labelled ones (unlabelled images) enter the soft
term only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tlrun.config.fields import bounded, choice
from tlrun.config.methods import TeacherBase
from tlrun.methods import DISTILL


@dataclass
class KdConfig(TeacherBase):
    """distill=kd: where the teacher's soft targets come from, and Hinton's transfer set."""

    # cached: computed once on the un-augmented images (cheap: a T×α sweep pays one teacher pass); online: the
    # frozen teacher runs on every training batch, on the same augmented view the student sees (consistent
    # views, Beyer et al. 2022); auto: online when data.augment draws random transforms, else cached.
    teacher_logits: str = choice("auto", ("auto", "cached", "online"),
                                 help="Teacher soft targets: cached (one pass on un-augmented images), online (every "
                                      "batch, the student's view), auto (online with random augmentation, else cached)")
    # Images of the run's dataset that its splits leave out (data.max_per_class), used *without labels*.
    transfer_images: int = bounded(0, low=0,
                                   help="Hinton's transfer set: this many unlabelled images the splits leave out, "
                                        "added to the soft-target term (0 = none)")
    latency: bool = field(default=False, metadata={
        "help": "After training, measure the batch-1 CPU latency of the teacher and the student (on copies of "
                "them) into metrics.json"})


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) averaged over the batch, times T²."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float, label_smoothing: float = 0.0
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinton KD loss and its parts (``kd_loss``: the T²-scaled KL over every row, ``ce_loss``: hard-label
    CE over the first ``len(targets)`` rows; class indices, or class probabilities under MixUp/CutMix)."""
    kd = soft_target_kl(student_logits, teacher_logits.to(student_logits.dtype), temperature)
    ce = F.cross_entropy(student_logits[:len(targets)], targets, label_smoothing=label_smoothing)
    return alpha * kd + (1.0 - alpha) * ce, {"kd_loss": kd.item(), "ce_loss": ce.item()}


class StudentStage(nn.Module):
    """Epochs that train the student before its KD epochs, in the same Engine, run folder and
    ft_history.csv (FitNet's hint stage). A loss offers one through :meth:`DistillationLoss.pre_stage`.
    Its own parameters (FitNet's regressor) get an optimizer group and are checkpointed with the run;
    the models it reads are not its submodules."""

    name = "pre"  # history column ``<name>_stage`` is 1 in its epochs, 0 in the KD epochs
    epochs = 0

    def forward(self, images: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(loss, the student's logits, per-step logs) of a batch of (labelled and transfer) images."""
        raise NotImplementedError

    def close(self) -> None:
        """The stage is over: release what it attached to the models (feature hooks)."""


@DISTILL.register("kd", KdConfig, pipeline="kd")
class DistillationLoss(nn.Module):
    """:func:`distillation_loss` with its T, α and label smoothing fixed (the KD pipeline's loss).

    A subclass may set ``uses_progress`` (the KD step then passes ``progress=`` in [0, 1], e.g. for DKD's
    warm-up), offer a :class:`StudentStage` from ``pre_stage`` and add ``metrics`` to metrics.json."""

    uses_progress = False

    def __init__(self, temperature: float, alpha: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.temperature, self.alpha, self.label_smoothing = float(temperature), float(alpha), float(label_smoothing)

    @classmethod
    def from_config(cls, cfg: Any, label_smoothing: float = 0.0) -> DistillationLoss:
        """From the run's distill node (distill.temperature, distill.alpha) and train.label_smoothing."""
        return cls(cfg.temperature, cfg.alpha, label_smoothing)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a batch whose first len(targets) rows are labelled, and its parts for ft_history.csv."""
        return distillation_loss(student_logits, teacher_logits, targets, self.temperature, self.alpha,
                                 self.label_smoothing)

    def pre_stage(self, student: nn.Module, student_geometry: Any, teacher: Any,
                  placement: Any) -> Optional[StudentStage]:
        """A stage that trains the student before KD (none for a loss on logits alone)."""
        return None

    def metrics(self) -> dict[str, Any]:
        """The method's own settings for metrics.json (distill.temperature and alpha are already there)."""
        return {}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, label_smoothing={self.label_smoothing}"
