"""The base nodes of the method groups ``adaptation=`` and ``distill=``.

Each method's own node extends one of these with only its keys, in the method's module
(``tlrun/methods/dann.py``: ``DannConfig(AlignmentBase)``), so ``adaptation.discriminator_width``
exists only under DANN. ``adaptation=none`` / ``distill=none`` are the bare base nodes. The YAML of an
option (``conf/adaptation/dann.yaml``) holds the same keys and defaults (tests/test_methods.py checks
that the two agree), so Hydra rejects another method's key while composing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from tlrun.config.fields import bounded, choice, path_field
from tlrun.errors import ConfigError

FREEZE_STRATEGIES = ("none", "all", "partial", "early", "discriminative")
WARMUP_BATCH_NORM = ("joint", "source")


def method_field(help: str) -> Any:
    """The ``method`` key of a method node: its value is checked against the method registry."""
    return field(default="none", metadata={"method": True, "help": help})


@dataclass
class AdaptationBase:
    """Unsupervised domain adaptation (source labels, unlabelled target); adaptation=none with a
    data.target is the source-only baseline."""

    method: str = method_field("Domain adaptation to data.target: none (source-only when data.target is set) or a "
                               "registered method (tlrun --help adaptation lists them)")
    features: str = choice("pooled", ("pooled", "logits"),
                           help="Which features are aligned: the backbone's pooled features (the head's input) "
                                "or the logits")
    # The DANN paper attaches its discriminator to the conv features (e.g. feature_layer=pool).
    feature_layer: Optional[str] = field(default=None, metadata={
        "help": "With features=pooled: align the (flattened) output of this module instead, e.g. pool or "
                "features.13; null = the head's input"})
    feature_plot: str = choice("pca", ("pca", "tsne"),
                               help="features.png: source vs target features before/after training, by pca or tsne")
    # Label-free validators (tlrun/methods/validators.py), scored every epoch; target labels never select.
    select_by: str = choice("source_val", ("source_val", "entropy", "im", "snd", "dev", "last"),
                            help="Which epoch's checkpoint is kept: best source val_acc, lowest target entropy, "
                                 "highest information maximisation (im), highest SND, lowest DEV risk, or the last")

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """A label-free validator scores target predictions: it needs a target domain."""
        if cfg.adaptation.select_by != "source_val" and cfg.data.target is None and cfg.data.target_root is None:
            raise ConfigError(f"adaptation.select_by={cfg.adaptation.select_by} scores the target domain, but the "
                              "run has none; add data.target=<dataset> or data.target_root=<folder>, or drop it")


@dataclass
class AlignmentBase(AdaptationBase):
    """A method that adds a weighted domain loss to the source cross-entropy."""

    weight: float = bounded(1.0, low=0.0,
                            help="Weight of the domain loss at the end of training (DANN's lambda max / DAN's "
                                 "trade-off)")
    schedule: str = choice("dann", ("dann", "constant"),
                           help="Domain-loss weight over progress p (iterations): dann ramps it as "
                                "weight * (2 / (1 + exp(-gamma * p)) - 1), constant keeps it at weight")
    gamma: float = bounded(10.0, low=0.0, low_open=True, help="Steepness of the dann schedule's ramp")
    # Aligning features before the source classifier has learned anything finds the trivial solution:
    # constant features, perfectly aligned, at chance accuracy. The schedule counts from the start.
    warmup_epochs: int = bounded(1, low=0, help="Source-only epochs before the domain loss starts (its schedule "
                                                "ramps from there)")
    warmup_source_acc: float = bounded(0.5, low=0.0, high=1.0,
                                       help="...and until an epoch's source train accuracy has covered this fraction "
                                            "of the way from chance to 1 (0 = epochs only)")
    # source: a warm-up epoch is the source-only run's epoch (the warm-up the collapse needs, and an adapted run
    # can differ from source-only only once its loss starts); joint: BatchNorm over both domains from the first
    # step. Level within the seeds' noise on the benchmark pairs: benchmarks/da/README.md.
    warmup_batch_norm: str = choice("source", WARMUP_BATCH_NORM,
                                    help="During the warm-up: source = the network takes source-only steps (the "
                                         "target stays out of it until the loss starts; a discriminator trains on "
                                         "the side); joint = the target batch still passes through the network "
                                         "(BatchNorm over both domains, no domain loss)")
    # Minimum Class Confusion (tlrun/methods/mcc.py) as a regulariser of any alignment method, on the target
    # logits; it shares the warm-up (an untrained classifier's confident guesses are not worth sharpening).
    mcc_weight: float = bounded(0.0, low=0.0,
                                help="Add MCC (minimum class confusion of the target predictions) x this to the "
                                     "method's loss once the warm-up is over (0 = off; adaptation=mcc uses weight)")
    mcc_temperature: float = bounded(2.5, low=0.0, low_open=True,
                                     help="Temperature T of MCC's target predictions softmax(logits / T)")


@dataclass
class DistillBase:
    """Knowledge distillation of a teacher into the run's model (the student)."""

    method: str = method_field("Knowledge distillation: none, or a registered method (tlrun --help distill lists "
                               "them)")

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """Cross-key checks of the whole run config that concern this group (none here)."""


@dataclass
class TeacherBase(DistillBase):
    """A method with a teacher: a finished run, or a fine-tuned stage cached by its config and data."""

    teacher: Optional[str] = path_field(
        help="Teacher: a finished run folder or its ft_model.pt; null = fine-tune distill.teacher_model first "
             "(a cached stage)")
    teacher_model: str = field(default="mobilenet_v2", metadata={
        "help": "Teacher architecture fine-tuned first when distill.teacher is null"})
    teacher_freeze: str = choice("none", FREEZE_STRATEGIES, help="freeze.strategy of that teacher stage")
    teacher_epochs: int = bounded(4, low=1, help="Training epochs of that teacher stage")
    # A big pretrained teacher often wants more pixels than a small student.
    teacher_image_size: Optional[int] = bounded(None, low=8,
                                                help="Input size of the teacher stage; null = data.image_size")
    temperature: float = bounded(4.0, low=0.0, low_open=True,
                                 help="Softmax temperature T of the soft targets (the KL term is scaled by T^2)")
    alpha: float = bounded(0.7, low=0.0, high=1.0,
                           help="Weight of the soft (teacher) term; 1 - alpha weights the hard-label cross-entropy")

    @staticmethod
    def check(cfg: DictConfig) -> None:
        if cfg.distill.teacher:
            check_teacher_path(str(cfg.distill.teacher))


def check_teacher_path(teacher: str) -> None:
    """Fail before any data is loaded when distill.teacher names no model file (same words as the loader)."""
    path = Path(teacher).expanduser()
    if not (path.is_file() or (path / "ft_model.pt").is_file()):
        raise ConfigError(f"distill.teacher={teacher}: no ft_model.pt at {path}; "
                          "give a finished run folder or its ft_model.pt")
