"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    loss = α · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − α) · CE(s, y)

α weights the *soft* (teacher) term, as in tlrun's seeds; torchdistill's ``alpha`` weights the hard
term instead. T² keeps the soft term's gradients on the scale of the hard term when T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) averaged over the batch, times T²."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float, label_smoothing: float = 0.0
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinton KD loss and its parts (``kd_loss``: the T²-scaled KL, ``ce_loss``: hard-label CE)."""
    kd = soft_target_kl(student_logits, teacher_logits.to(student_logits.dtype), temperature)
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    return alpha * kd + (1.0 - alpha) * ce, {"kd_loss": kd.item(), "ce_loss": ce.item()}
