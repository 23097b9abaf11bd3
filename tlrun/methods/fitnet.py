"""FitNet hints (Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, "FitNets: Hints for Thin Deep Nets").

The student's guided layer u_S (``distill.student_layer``) learns to predict the teacher's hint layer
u_T (``distill.teacher_layer``) through a regressor W_r:

    L_hint = ½ ‖W_r(u_S(x)) − u_T(x)‖²        (per image, summed over the hint's elements; batch mean)

W_r is a 1×1 convolution from the student's channels to the teacher's when both layers give feature maps
(N, C, H, W), after an adaptive average pool to the teacher's H × W when the sizes differ (the two commute:
both are linear, the convolution acts per position); a Linear layer when both give vectors (N, D).

The paper's two stages, as two phases of the run's one Engine (one ft_history.csv, epochs numbered on):

1. ``distill.hint_epochs`` epochs of L_hint alone. Only the student's layers up to the guided layer and
   the regressor receive gradients (the student runs whole, so train_acc stays the real one); the
   teacher runs online on the same augmented batch, stopped at its hint layer.
2. ``train.epochs`` epochs of Hinton KD on the whole student, exactly as ``distill=kd`` (temperature,
   alpha, and ``distill.teacher_logits`` cached/online), with a fresh learning-rate schedule; the best
   validation epoch is selected among these. The regressor is not used any more.

Both models' features are read through :class:`tlrun.features.FeatureTap`, created once for the stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from tlrun.config.fields import bounded
from tlrun.config.methods import TeacherBase
from tlrun.errors import ConfigError
from tlrun.features import FeatureTap
from tlrun.methods import DISTILL
from tlrun.methods.kd import DistillationLoss, KdConfig, StudentStage


@dataclass
class FitNetConfig(KdConfig):
    """distill=fitnet: hint training of the student up to student_layer on the teacher's teacher_layer, then KD."""

    student_layer: Optional[str] = field(default=None, metadata={
        "help": "Module of the student whose output is the guided layer (e.g. conv2 for lenet); required"})
    teacher_layer: Optional[str] = field(default=None, metadata={
        "help": "Module of the teacher whose output is the hint (e.g. layer2 for small_resnet); required"})
    hint_epochs: int = bounded(2, low=1, help="Stage 1: epochs of hint training (student up to student_layer + "
                                              "the regressor) before the train.epochs of KD")

    @staticmethod
    def check(cfg: DictConfig) -> None:
        TeacherBase.check(cfg)
        if not cfg.distill.student_layer or not cfg.distill.teacher_layer:
            raise ConfigError("distill=fitnet needs distill.student_layer=<student module> and "
                              "distill.teacher_layer=<teacher module> (e.g. conv2 and layer2); a wrong name's "
                              "error lists the model's modules")
        if cfg.train.get("resume"):
            raise ConfigError("train.resume cannot continue a distill=fitnet run (its hint and KD stages are two "
                              "phases of one engine); start it again without train.resume")
        if cfg.freeze.head_warmup_epochs:
            raise ConfigError("freeze.head_warmup_epochs would freeze the student's backbone during "
                              "distill=fitnet's hint stage; set freeze.head_warmup_epochs=0")


class HintRegressor(nn.Module):
    """W_r: the student's guided-layer output to the shape of the teacher's hint (shapes without the batch)."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.student_shape, self.teacher_shape = tuple(student_shape), tuple(teacher_shape)
        self.pool_to: Optional[tuple[int, int]] = None
        if len(student_shape) == 3 and len(teacher_shape) == 3:
            self.proj: nn.Module = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
            if tuple(student_shape[1:]) != tuple(teacher_shape[1:]):
                self.pool_to = (int(teacher_shape[1]), int(teacher_shape[2]))
        elif len(student_shape) == 1 and len(teacher_shape) == 1:
            self.proj = nn.Linear(student_shape[0], teacher_shape[0])
        else:
            raise ValueError(f"no hint regressor from {self.student_shape} to {self.teacher_shape}: both must be "
                             "feature maps (C, H, W) or both vectors (D,)")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.pool_to is not None:
            features = F.adaptive_avg_pool2d(features, self.pool_to)
        return self.proj(features)

    def describe(self) -> str:
        kind = "conv1x1" if isinstance(self.proj, nn.Conv2d) else "linear"
        pool = f", adaptive pool {self.student_shape[1:]} -> {self.pool_to}" if self.pool_to else ""
        return f"{kind} {self.student_shape} -> {self.teacher_shape}{pool}"


class HintLoss(nn.Module):
    """½ ‖prediction − hint‖² per image (summed over the hint's elements), averaged over the batch; float32."""

    def forward(self, prediction: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        difference = prediction.float() - hint.float()
        return 0.5 * difference.pow(2).flatten(1).sum(dim=1).mean()


def _probe_shape(tap: FeatureTap, inputs: torch.Tensor, key: str, name: str) -> tuple[int, ...]:
    """The tapped features' shape (without the batch) from one eval-mode pass: no BatchNorm statistics move."""
    model = tap.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = tap(inputs)
    except ValueError as exc:  # a module that returns a tuple, or does not run in forward()
        raise ConfigError(f"{key}={name}: {exc}; choose a module that outputs a feature map or a vector") from None
    finally:
        model.train(was_training)
    return tuple(features.shape[1:])


class HintStage(StudentStage):
    """FitNet stage 1: L_hint(W_r(student features), teacher features) on each batch, the teacher frozen."""

    name = "hint"

    def __init__(self, student: nn.Module, student_layer: str, teacher: nn.Module, teacher_layer: str,
                 to_teacher_view: Callable[[torch.Tensor], torch.Tensor], image_size: int, epochs: int) -> None:
        super().__init__()
        self.epochs = int(epochs)
        self.to_teacher_view = to_teacher_view
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        # Plain attributes, not submodules: the stage's state is its regressor alone.
        self._student_tap = FeatureTap(student, student_layer, side="output", flatten=False, clone=True,
                                       key="distill.student_layer")
        try:
            self._teacher_tap = FeatureTap(teacher, teacher_layer, side="output", flatten=False, stop=True,
                                           key="distill.teacher_layer")
        except ConfigError:
            self._student_tap.remove()
            raise
        try:
            parameter = next(student.parameters())
            probe = torch.zeros(2, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
            student_shape = _probe_shape(self._student_tap, probe, "distill.student_layer", student_layer)
            teacher_shape = _probe_shape(self._teacher_tap, to_teacher_view(probe), "distill.teacher_layer",
                                         teacher_layer)
            try:
                self.regressor = HintRegressor(student_shape, teacher_shape).to(parameter.device)
            except ValueError as exc:
                raise ConfigError(f"distill.student_layer={student_layer} and distill.teacher_layer={teacher_layer}:"
                                  f" {exc}; choose two layers of the same kind") from None
        except BaseException:
            self.close()
            raise
        self.hint = HintLoss()

    def forward(self, images: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        logits = self._student_tap.model(images)  # whole: the head is untouched by the hint loss anyway
        guided = self._student_tap.features
        teacher = self._teacher_tap.model
        teacher.eval()
        with torch.no_grad():
            hint = self._teacher_tap(self.to_teacher_view(images))
        loss = self.hint(self.regressor(guided), hint)
        return loss, logits, {"hint_loss": loss.item()}

    def close(self) -> None:
        self._student_tap.remove()
        if hasattr(self, "_teacher_tap"):
            self._teacher_tap.remove()


@DISTILL.register("fitnet", FitNetConfig, pipeline="kd")
class FitNetLoss(DistillationLoss):
    """Stage 2 is Hinton KD (this loss, as distill=kd); stage 1, the hints, is its :class:`HintStage`."""

    def __init__(self, temperature: float, alpha: float, label_smoothing: float = 0.0, student_layer: str = "",
                 teacher_layer: str = "", hint_epochs: int = 2) -> None:
        super().__init__(temperature, alpha, label_smoothing)
        self.student_layer, self.teacher_layer, self.hint_epochs = student_layer, teacher_layer, int(hint_epochs)
        self.regressor_shape = ""

    @classmethod
    def from_config(cls, cfg: Any, label_smoothing: float = 0.0) -> FitNetLoss:
        return cls(cfg.temperature, cfg.alpha, label_smoothing, cfg.student_layer, cfg.teacher_layer, cfg.hint_epochs)

    def pre_stage(self, student: nn.Module, student_geometry: Any, teacher: Any, placement: Any) -> HintStage:
        """The hint stage on the prepared student and the loaded teacher (a LoadedModel, frozen here)."""
        from tlrun.pipelines.distill import to_teacher_view  # the pipeline imports this module's registry

        teacher_model = placement.model(teacher.model).eval().requires_grad_(False)
        stage = HintStage(student, self.student_layer, teacher_model, self.teacher_layer,
                          lambda images: to_teacher_view(images, student_geometry, teacher.geometry),
                          student_geometry.crop_size, self.hint_epochs)
        self.regressor_shape = stage.regressor.describe()
        return stage

    def metrics(self) -> dict[str, Any]:
        return {"student_layer": self.student_layer, "teacher_layer": self.teacher_layer,
                "hint_epochs": self.hint_epochs, "hint_regressor": self.regressor_shape}
