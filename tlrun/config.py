"""Typed schema of a tlrun run, registered in Hydra's ConfigStore.

Every composed config is merged onto these dataclasses, so Hydra rejects unknown keys and wrong
types for plain overrides. ``validate_config`` re-checks the composed result (``+key=...`` slips
past Hydra's struct check) and the value ranges/choices that types alone cannot express.

This module must stay light: ``tlrun --help`` and tab completion import it (no torch here).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from tlrun.errors import ConfigError

# Config groups that compose a run. Each mirrors a module of the package.
GROUPS = ("model", "freeze", "adaptation", "distill", "data", "device")
# Groups with no default that only layer overrides on top (``# @package _global_`` files).
OVERLAY_GROUPS = ("experiment", "hparams_search")


def choice(default: Any, choices: tuple, help: str = "") -> Any:
    """A field restricted to ``choices`` (checked by ``validate_config``)."""
    return field(default=default, metadata={"choices": choices, "help": help})


def bounded(default: Any, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, help: str = "") -> Any:
    """A numeric field with an allowed range (checked by ``validate_config``). Every int/float key of
    the schema is declared with ``bounded`` (a test enforces it), so a new key gets its range checked."""
    return field(default=default, metadata={"low": low, "high": high, "low_open": low_open,
                                            "help": help})


def unbounded(default: Any, help: str = "") -> Any:
    """A numeric field that may take any value (declared explicitly, so none is unbounded by omission)."""
    return field(default=default, metadata={"low": None, "high": None, "low_open": False, "help": help})


def path_field(default: Optional[str] = None, help: str = "") -> Any:
    """A file or folder key: ``~`` is expanded when the config is validated (``expand_paths``)."""
    return field(default=default, metadata={"path": True, "help": help})


def check_range(key: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False) -> None:
    """ConfigError naming ``key`` when the number ``value`` lies outside [low, high] (or (low, high]).
    Shared by the schema and the companion commands' arguments (--threads, --batch-size...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):  # nan passes every comparison below
        raise ConfigError(f"invalid value for {key}: {value}; it must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"invalid value for {key}: {value}; it must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"invalid value for {key}: {value}; it must be <= {high}")


def check_arg_ranges(args: Any, ranges: dict[str, tuple[Optional[float], Optional[float]]]) -> None:
    """The companion commands' range table: ConfigError (``check_range``'s wording, naming the flag) for
    the first argparse argument outside its range; a list argument is checked value by value, None skipped."""
    for dest, (low, high) in ranges.items():
        value = getattr(args, dest)
        for item in value if isinstance(value, list) else [value]:
            check_range("--" + dest.replace("_", "-"), item, low, high)


def _check_channel_stats(values: Optional[list], positive: bool) -> Optional[str]:
    """data.mean / data.std: one value (all channels) or three (R, G, B); std must be > 0."""
    if values is None:
        return None
    if len(values) not in (1, 3):
        return f"give 1 value (every channel) or 3 (R, G, B), not {len(values)}"
    if positive and any(v <= 0 for v in values):
        return "every std must be > 0 (it divides the pixels)"
    return None


def _check_split(split: list) -> Optional[str]:
    if len(split) != 3 or any(s <= 0 for s in split) or abs(sum(split) - 1.0) > 1e-6:
        return "give 3 positive fractions (train, val, test) that sum to 1, e.g. data.split=[0.7,0.15,0.15]"
    return None


@dataclass
class ModelConfig:
    name: str = field(default="mobilenet_v2", metadata={
        "help": "Architecture: any torchvision classifier, or tlrun's own efficientnet_lite0, lenet, small_resnet, "
                "conv4"})
    weights: Optional[str] = field(default="DEFAULT", metadata={
        "help": "Pretrained weights: DEFAULT (torchvision's recommended), an enum member name such as IMAGENET1K_V1, "
                "or null for random init"})
    weights_path: Optional[str] = path_field(
        help="A local .pth for the architecture (a state dict, or a checkpoint holding one under state_dict/model)")


@dataclass
class FreezeConfig:
    strategy: str = choice("none", ("none", "all", "partial", "early", "discriminative"),
                           help="What trains: none (everything), all (the head only), partial (the last stages "
                                "+ head), early (all but the first half of the stages), discriminative (everything, "
                                "lr per stage)")
    # A stage = the blocks that output features at one spatial resolution (found by a probe forward pass).
    trainable_stages: int = bounded(1, low=1, help="freeze=partial: how many of the last stages train (with the head)")
    lr_decay: float = bounded(2.6, low=1.0,
                              help="freeze=discriminative: stage k below the head trains at train.lr / lr_decay**k "
                                   "(ULMFiT uses 2.6)")
    # Frozen BatchNorm layers keep their ImageNet statistics (eval mode) unless this is true.
    train_frozen_bn: bool = field(default=False, metadata={
        "help": "Let frozen BatchNorm layers update their running statistics (else they keep the pretrained "
                "ones)"})


@dataclass
class AdaptationConfig:
    """Unsupervised domain adaptation (source labels, unlabelled target): DANN or multi-kernel MMD."""

    method: str = choice("none", ("none", "dann", "mmd"),
                         help="Domain adaptation to data.target: none, dann (gradient reversal + domain discriminator, "
                              "Ganin et al. 2016), mmd (multi-kernel MMD, DAN, Long et al. 2015)")
    weight: float = bounded(1.0, low=0.0,
                            help="Weight of the domain loss at the end of training (DANN's lambda max / DAN's "
                                 "trade-off)")
    schedule: str = choice("dann", ("dann", "constant"),
                           help="Domain-loss weight over progress p (iterations): dann ramps it as "
                                "weight * (2 / (1 + exp(-gamma * p)) - 1), constant keeps it at weight")
    gamma: float = bounded(10.0, low=0.0, low_open=True, help="Steepness of the dann schedule's ramp")
    features: str = choice("pooled", ("pooled", "logits"),
                           help="Which features are aligned: the backbone's pooled features (the head's input) "
                                "or the logits")
    # The DANN paper attaches its discriminator to the conv features (e.g. feature_layer=pool).
    feature_layer: Optional[str] = field(default=None, metadata={
        "help": "With features=pooled: align the (flattened) output of this module instead, e.g. pool or "
                "features.13; null = the head's input"})
    discriminator_width: int = bounded(1024, low=1, help="dann: hidden units of the domain discriminator's MLP")
    discriminator_depth: int = bounded(2, low=1,
                                       help="dann: hidden blocks (Linear-BN-activation-Dropout) of the discriminator")
    # Dropout after each hidden block of the discriminator (TLlib uses dropout only without BatchNorm).
    discriminator_dropout: float = bounded(0.5, low=0.0, high=0.9,
                                           help="dann: dropout after each hidden block of the discriminator (0 = none)")
    # BatchNorm1d in the discriminator's hidden blocks (the DANN paper's domain classifier has none).
    discriminator_batch_norm: bool = field(default=True, metadata={
        "help": "dann: BatchNorm1d in the discriminator's hidden blocks (the DANN paper's classifier has none)"})
    # Hidden activation of the discriminator: relu (the paper's, TLlib's) or leaky_relu. Without BatchNorm the
    # features can switch ReLU units off (ft_history's discriminator_active; a collapse is warned about);
    # leaky units cannot die.
    discriminator_activation: str = choice("relu", ("relu", "leaky_relu"),
                                           help="dann: hidden activation of the discriminator: relu (the paper's) "
                                                "or leaky_relu (slope 0.2, units cannot die)")
    discriminator_lr_mult: float = bounded(1.0, low=0.0, low_open=True,
                                           help="dann: discriminator learning rate = train.lr x this (its own "
                                                "parameter group, same schedule)")
    mmd_multipliers: List[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0], metadata={
        "validator": lambda v: None if v and all(x > 0 for x in v) else
        "give one or more positive bandwidth multipliers, e.g. adaptation.mmd_multipliers=[0.5,1,2]",
        "help": "mmd: Gaussian kernel bandwidths = multiplier x the batch's mean pairwise squared distance "
                "(DAN: 5 kernels)"})
    mmd_estimator: str = choice("quadratic", ("quadratic", "linear"),
                                help="mmd: quadratic (biased V-statistic, any batch sizes) or linear (Gretton's "
                                     "unbiased linear-time estimate)")
    feature_plot: str = choice("pca", ("pca", "tsne"),
                               help="features.png: source vs target features before/after training, by pca or tsne")


@dataclass
class DistillConfig:
    """Knowledge distillation of a teacher into the run's model (the student)."""

    method: str = choice("none", ("none", "kd", "meta"),
                         help="Knowledge distillation: none, kd (Hinton KD from a teacher), meta (few-shot "
                              "meta-distillation, MAML + KD)")
    teacher: Optional[str] = path_field(
        help="Teacher: a finished run folder or its ft_model.pt; null = fine-tune distill.teacher_model first "
             "(a cached stage)")
    teacher_model: str = field(default="mobilenet_v2", metadata={
        "help": "Teacher architecture fine-tuned first when distill.teacher is null"})
    teacher_freeze: str = choice("none", ("none", "all", "partial", "early", "discriminative"),
                                 help="freeze.strategy of that teacher stage")
    teacher_epochs: int = bounded(4, low=1, help="Training epochs of that teacher stage")
    # A big pretrained teacher often wants more pixels than a small student.
    teacher_image_size: Optional[int] = bounded(None, low=8,
                                                help="Input size of the teacher stage; null = data.image_size")
    temperature: float = bounded(4.0, low=0.0, low_open=True,
                                 help="Softmax temperature T of the soft targets (the KL term is scaled by T^2)")
    alpha: float = bounded(0.7, low=0.0, high=1.0,
                           help="Weight of the soft (teacher) term; 1 - alpha weights the hard-label cross-entropy")
    # Where the teacher's train-set logits come from. cached: computed once on the un-augmented images
    # (cheap: a T×α sweep pays one teacher pass); online: the frozen teacher runs on every training batch,
    # on the same augmented view the student sees (consistent views, Beyer et al. 2022); auto: online when
    # data.augment draws random transforms, else cached.
    teacher_logits: str = choice("auto", ("auto", "cached", "online"),
                                 help="Teacher soft targets: cached (one pass on un-augmented images), online (every "
                                      "batch, the student's view), auto (online with random augmentation, else cached)")
    # Hinton's transfer set: this many images of the run's dataset that its splits leave out
    # (data.max_per_class), used *without labels*: each step adds a batch of them to the soft-target term.
    transfer_images: int = bounded(0, low=0,
                                   help="Hinton's transfer set: this many unlabelled images the splits leave out, "
                                        "added to the soft-target term (0 = none)")
    # --- distill=meta: few-shot episodes (N-way K-shot), MAML inner loop on a functional copy ---
    # meta_distill: inner loss = the KD mix above (alpha) to the teacher's episode soft targets;
    # maml: inner CE, no teacher; protonet: prototypes on the teacher's features (no training);
    # kd_finetune: KD on the meta-train classes, then a prototype-initialised head tuned per episode.
    meta_mode: str = choice("meta_distill", ("meta_distill", "maml", "protonet", "kd_finetune"),
                            help="distill=meta: meta_distill (MAML, inner KD to the teacher), maml (inner CE), "
                                 "protonet (teacher prototypes), kd_finetune (KD, then a prototype head)")
    n_way: int = bounded(5, low=2, help="distill=meta: classes per episode (N-way)")
    k_shot: int = bounded(5, low=1, help="distill=meta: support images per class in training episodes (K-shot)")
    n_query: int = bounded(15, low=1, help="distill=meta: query images per class per episode")
    meta_batch: int = bounded(4, low=1, help="distill=meta: episodes per outer step")
    episodes_per_epoch: int = bounded(200, low=1, help="distill=meta: training episodes per epoch")
    inner_steps: int = bounded(5, low=1, help="distill=meta: inner-loop SGD steps on the support set")
    inner_lr: float = bounded(0.1, low=0.0, low_open=True, help="distill=meta: inner-loop learning rate")
    eval_inner_steps: int = bounded(10, low=1, help="distill=meta: adaptation steps on meta-val/meta-test episodes")
    first_order: bool = field(default=False, metadata={
        "help": "distill=meta: first-order MAML (no gradient through the inner updates)"})
    outer_alpha: float = bounded(0.0, low=0.0, high=1.0, help="distill=meta: KD share of the outer (query) loss")
    teacher_scale: float = bounded(10.0, low=0.0, low_open=True,
                                   help="distill=meta: teacher logits = -scale x squared distance of L2-normalised "
                                        "features to the prototypes")
    meta_test_classes: Optional[List[str]] = field(default=None, metadata={
        "help": "distill=meta: held-out meta-test classes (names); null = the last half of the classes "
                "(at least n_way)"})
    eval_shots: List[int] = field(default_factory=lambda: [1, 5],
                                  metadata={"validator": lambda v: None if v and all(int(k) >= 1 for k in v)
                                            else "give shots >= 1, e.g. distill.eval_shots=[1,5]",
                                            "help": "distill=meta: support shots evaluated on meta-test episodes"})
    eval_episodes: int = bounded(200, low=1, help="distill=meta: meta-test episodes per evaluated shot count")
    val_episodes: int = bounded(50, low=1, help="distill=meta: meta-val episodes per validation (model selection)")


@dataclass
class AugmentConfig:
    random_resized_crop: bool = field(default=False, metadata={
        "help": "RandomResizedCrop to the input size, area fraction from crop_scale_min to 1"})
    crop_scale_min: float = bounded(0.6, low=0.01, high=1.0, help="Smallest area fraction of random_resized_crop")
    hflip: bool = field(default=False, metadata={"help": "Random horizontal flips"})
    vflip: bool = field(default=False, metadata={"help": "Random vertical flips"})
    rotation: float = bounded(0.0, low=0.0, high=180.0, help="Random rotation by up to this many degrees (0 = off)")
    color_jitter: float = bounded(0.0, low=0.0,
                                  help="ColorJitter strength of brightness, contrast and saturation (0 = off)")
    auto: str = choice("none", ("none", "trivial", "rand"),
                       help="Automatic augmentation: none, trivial (TrivialAugmentWide), rand (RandAugment)")
    random_erasing: float = bounded(0.0, low=0.0, high=1.0, help="RandomErasing probability (0 = off)")
    mixup_alpha: float = bounded(0.0, low=0.0, help="Batch-level MixUp with Beta(alpha, alpha) (0 = off)")
    cutmix_alpha: float = bounded(0.0, low=0.0, help="Batch-level CutMix with Beta(alpha, alpha) (0 = off)")


@dataclass
class DataConfig:
    name: str = field(default="digits", metadata={
        "help": "Dataset: a built-in source (digits, mnist, cifar10...) or imagefolder"})
    root: Optional[str] = path_field(
        help="data=imagefolder: a folder of class sub-folders, or with train/ + val/ and/or test/ inside")
    # Stratified and seeded; a source's own test part is kept.
    split: List[float] = field(default_factory=lambda: [0.7, 0.15, 0.15],
                               metadata={"validator": lambda v: _check_split(v),
                                         "help": "Train/val/test fractions when the source has no fixed split"})
    image_size: Optional[int] = bounded(None, low=8,
                                        help="Input size fed to the model; null follows the weights' own transforms "
                                             "(e.g. 224)")
    resize_size: Optional[int] = bounded(None, low=8,
                                         help="Size images are resized to before the centre crop to image_size; "
                                              "null = image_size if set, else the weights' own")
    mean: Optional[List[float]] = field(default=None, metadata={
        "validator": lambda v: _check_channel_stats(v, False),
        "help": "Normalisation mean: one value for every channel, or three (R, G, B); null = the weights' own"})
    std: Optional[List[float]] = field(default=None, metadata={
        "validator": lambda v: _check_channel_stats(v, True),
        "help": "Normalisation std (> 0): one value for every channel, or three (R, G, B); null = the weights' own"})
    classes: Optional[List[str]] = field(default=None, metadata={
        "help": "Keep only these classes (names as the data calls them, e.g. [0, 1, 2] for digits); null = all"})
    max_per_class: Optional[int] = bounded(None, low=1,
                                           help="Cap on images per class of each source part (quick experiments, "
                                                "few-shot); null = all")
    bad_images: str = choice("error", ("error", "skip"),
                             help="An image that fails to decode: error stops the run naming it, skip warns and "
                                  "drops it")
    cache_dir: Optional[str] = path_field(
        help="Downloads and built datasets are cached here; null = $TLRUN_CACHE_DIR or ~/.cache/tlrun")
    # Image files (data=imagefolder...) whose decoded split fits in this many MB are decoded and resized
    # once into a uint8 tensor store (augmentation then runs on those tensors); larger splits, or 0,
    # stream from the files, decoded every epoch (in device.num_workers worker processes).
    in_memory_max_mb: int = bounded(1024, low=0,
                                    help="Image-file splits that decode to at most this many MB are decoded once "
                                         "into memory; larger ones (or 0) stream from the files")
    # Setting it without adaptation= gives the source-only baseline with target evaluation.
    target: Optional[str] = field(default=None, metadata={
        "help": "Domain adaptation: the unlabelled target domain (a dataset name, or imagefolder); null = none"})
    target_root: Optional[str] = path_field(
        help="Domain adaptation: the target's image folder (implies data.target=imagefolder when that is null)")
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={
        "help": "Augmentations of the training split (torchvision.transforms.v2)"})


@dataclass
class DeviceConfig:
    type: str = choice("auto", ("auto", "cpu", "cuda", "mps"),
                       help="auto picks cuda, then mps, then cpu; cpu, cuda, mps (a missing one is an error)")
    num_workers: int = bounded(0, low=0, help="DataLoader worker processes (persistent between epochs)")
    threads: Optional[int] = bounded(None, low=1, help="torch intra-op threads on CPU; null = torch's default")
    # NHWC memory layout: measured ~2x faster MobileNetV2 training on a 2-core CPU (oneDNN).
    channels_last: bool = field(default=True, metadata={"help": "NHWC (channels-last) memory layout for the model"})
    amp: str = choice("off", ("off", "bf16", "fp16"),
                      help="Mixed precision: bf16 autocast (CPU and recent GPUs), fp16 autocast + GradScaler (CUDA)")
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model (first steps slower while it compiles)"})
    pin_memory: Optional[bool] = field(default=None, metadata={
        "help": "Pinned host memory for faster copies to the GPU; null = on for CUDA"})
    deterministic: bool = field(default=False, metadata={
        "help": "Deterministic kernels (torch.use_deterministic_algorithms); cuDNN autotuning is off then"})
    gpu_per_job: bool = field(default=False, metadata={
        "help": "Parallel sweep jobs on one multi-GPU box (hydra/launcher=joblib): job n uses GPU n mod #GPUs"})


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = bounded(None, low=1,
                                      help="Stop after this many epochs without val improvement; null = off")
    min_delta: float = bounded(0.0, low=0.0, help="Smallest val improvement that resets the patience")


PHASE_EXAMPLE = "e.g. train.progressive_resizing=[{image_size:64,epochs:2},{image_size:128,epochs:1,lr:1e-3}]"


def _check_phases(phases: Any) -> Optional[str]:
    """Progressive-resizing phases: a non-empty list of {image_size >= 8, epochs >= 1, lr > 0 or null}."""
    if not isinstance(phases, (list, tuple)) or not phases:
        return f"give a non-empty list of phases, {PHASE_EXAMPLE}"
    for index, phase in enumerate(phases, start=1):
        if not isinstance(phase, dict) or not {"image_size", "epochs"} <= set(phase) \
                or set(phase) - {"image_size", "epochs", "lr"}:
            return f"phase {index} needs image_size and epochs (and optionally lr), {PHASE_EXAMPLE}"
        size, epochs, lr = phase["image_size"], phase["epochs"], phase.get("lr")
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            return f"phase {index}: image_size must be a whole number >= 8"
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            return f"phase {index}: epochs must be a whole number >= 1"
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                               or lr <= 0):
            return f"phase {index}: lr must be > 0 (or null for train.lr)"
    return None


@dataclass
class ResizePhase:
    """One phase of progressive resizing: train ``epochs`` at ``image_size`` with peak ``lr``."""

    image_size: int = bounded(64, low=8, help="Input size of this phase")
    epochs: int = bounded(1, low=1, help="Training epochs of this phase")
    lr: Optional[float] = bounded(None, low=0.0, low_open=True,
                                  help="Peak learning rate of this phase; null = train.lr")


@dataclass
class TrainConfig:
    epochs: int = bounded(4, low=1, help="Training epochs")
    batch_size: int = bounded(64, low=1, help="Training batch size")
    eval_batch_size: int = bounded(256, low=1, help="Batch size of evaluation passes (validation, test, features)")
    lr: float = bounded(3e-3, low=0.0, low_open=True,
                        help="Peak learning rate (of the head; of every layer unless freeze=discriminative)")
    optimizer: str = choice("adamw", ("sgd", "adam", "adamw"), help="sgd (Nesterov momentum), adam or adamw")
    momentum: float = bounded(0.9, low=0.0, high=1.0, help="optimizer=sgd: momentum (Nesterov when > 0)")
    weight_decay: float = bounded(1e-4, low=0.0, help="Weight decay")
    # anneal: lr / (1 + 10 p)^0.75 over progress p in iterations (DANN paper, Ganin et al. 2016, 5.2.2).
    scheduler: str = choice("cosine", ("none", "cosine", "step", "onecycle", "anneal"),
                            help="Per-iteration lr schedule: none, cosine, step, onecycle, anneal "
                                 "(lr / (1 + 10 p)^0.75, the DANN paper's)")
    warmup_epochs: float = bounded(0.0, low=0.0, help="Linear lr warm-up in epochs (fractions allowed; 0 = none)")
    step_size: int = bounded(10, low=1, help="scheduler=step: epochs between decays")
    gamma: float = bounded(0.1, low=0.0, low_open=True, help="scheduler=step: decay factor")
    label_smoothing: float = bounded(0.0, low=0.0, high=1.0, help="Label smoothing of the cross-entropy (0 = none)")
    grad_clip: Optional[float] = bounded(None, low=0.0, low_open=True,
                                         help="Clip the gradients' global norm to this value; null = no clipping")
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig, metadata={
        "help": "Stop training when val_acc stops improving"})
    progress: str = choice("auto", ("auto", "rich", "plain", "none"),
                           help="Progress display: auto (a rich bar on a terminal, one line per epoch otherwise), "
                                "rich, plain, none")
    # Frozen backbones: run the frozen part once and train the rest on its cached outputs (finetune).
    # auto: on when the model splits cleanly there and no random augmentation is set; on: an error otherwise.
    cache_features: str = choice("auto", ("auto", "on", "off"),
                                 help="Frozen backbones: run the frozen part once and train the rest on its cached "
                                      "outputs (auto: when possible; on: an error when not; off)")
    cache_features_memory_mb: int = bounded(2048, low=0,
                                            help="Cached features up to this many MB stay in memory; larger ones "
                                                 "are memory-mapped from disk")
    # The run goes on in that folder.
    resume: Optional[str] = path_field(
        help="Continue an interrupted run: its folder (or a checkpoint in it), or auto = the newest unfinished "
             "run launched with the same overrides")
    # Progressive resizing (fine-tuning): phases of {image_size, epochs, lr} replace train.epochs and the
    # input size; one optimizer carries its state across phases, each phase has its own lr schedule.
    progressive_resizing: Optional[List[ResizePhase]] = field(default=None, metadata={
        "validator": _check_phases,
        "help": "Fine-tuning in phases [{image_size, epochs, lr}, ...] that replace train.epochs and the input "
                "size; null = off"})


@dataclass
class TlrunConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "The network: architecture and pretrained weights (group model=)"})
    freeze: FreezeConfig = field(default_factory=FreezeConfig, metadata={
        "help": "Which layers train (group freeze=)"})
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig, metadata={
        "help": "Unsupervised domain adaptation to data.target (group adaptation=)"})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={
        "help": "Knowledge distillation and few-shot meta-distillation (group distill=)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "Dataset, splits, preprocessing and augmentation (group data=)"})
    device: DeviceConfig = field(default_factory=DeviceConfig, metadata={
        "help": "Hardware, precision and data loading (group device=)"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "Optimisation: epochs, batch size, optimizer, schedule, early stopping"})
    # numpy and scikit-learn need 0 <= seed < 2**32.
    seed: int = bounded(0, low=0, high=2**32 - 1,
                        help="Seeds Python, NumPy and torch: the splits, initialisation and data order")
    optimized_metric: Optional[str] = field(default=None, metadata={
        "help": "The metrics.json key a run returns to a Hydra sweeper that optimises (hparams_search=...)"})


SCHEMA_NAME = "tlrun_schema"


def register_configs() -> None:
    """Register the schema and the generated group options in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from tlrun.models.catalog import MODEL_DEFAULTS
    from tlrun.rundir import register_resolver

    register_resolver()
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=TlrunConfig)
    # One option per known model name, so `model=<any torchvision classifier>` composes
    # (and tab-completes) without a YAML file per architecture.
    for name, overrides in MODEL_DEFAULTS.items():
        store.store(group="model", name=name, node=ModelConfig(name=name, **overrides))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _fields(schema: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _nested_schema(f: dataclasses.Field) -> Optional[type]:
    default_factory = f.default_factory  # type: ignore[misc]
    if default_factory is not dataclasses.MISSING:
        made = default_factory()
        if dataclasses.is_dataclass(made):
            return type(made)
    return None


def schema_field(key: str, schema: type = TlrunConfig) -> dataclasses.Field:
    """Field of a dotted key such as ``train.epochs``; ConfigError naming close matches if unknown."""
    parts = key.split(".")
    current = schema
    for depth, part in enumerate(parts):
        known = _fields(current)
        if part not in known:
            prefix = ".".join(parts[:depth])
            candidates = [f"{prefix}.{k}" if prefix else k for k in known]
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            where = f"'{prefix}'" if prefix else "the config"
            raise ConfigError(f"unknown key '{key}': {hint}valid keys in {where}: "
                              f"{', '.join(sorted(known))}")
        f = known[part]
        if depth == len(parts) - 1:
            return f
        nested = _nested_schema(f)
        if nested is None:
            raise ConfigError(f"unknown key '{key}': '{'.'.join(parts[:depth + 1])}' is a value, "
                              "not a section")
        current = nested
    raise AssertionError("unreachable")


_TYPE_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool), "a string"),
    "List[float]": (lambda v: isinstance(v, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v),
        "a list of finite numbers"),
}


def _base_type(f: dataclasses.Field) -> tuple[str, bool]:
    """('int', optional?) from the annotation string (annotations are postponed here)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if text.startswith("Optional[") and text.endswith("]"):
        return text[len("Optional["):-1], True
    return text, False


def check_value(key: str, f: dataclasses.Field, value: Any) -> None:
    """Raise ConfigError if ``value`` has the wrong type or breaks the field's choices or range."""
    meta = f.metadata
    base, optional = _base_type(f)
    if value is None:
        if not optional:
            raise ConfigError(f"invalid value for {key}: null; it needs a value")
        return
    check = _TYPE_CHECKS.get(base)
    if check is not None and not check[0](value):
        raise ConfigError(f"invalid value for {key}: {value!r}; it must be {check[1]}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"invalid value for {key}: {value!r}; valid choices: "
                          f"{', '.join(map(str, meta['choices']))}")
    if "validator" in meta and (problem := meta["validator"](value)):
        raise ConfigError(f"invalid value for {key}: {value}; {problem}")
    check_range(key, value, meta.get("low"), meta.get("high"), bool(meta.get("low_open")))


def validate_config(cfg: DictConfig, schema: type = TlrunConfig, prefix: str = "") -> None:
    """Check a composed run config against the schema: unknown keys, choices and ranges."""
    known = _fields(schema)
    for key in cfg.keys():
        if not prefix and key == "hydra":
            continue
        full_key = f"{prefix}{key}"
        f = schema_field(full_key)  # raises with a suggestion for unknown keys
        nested = _nested_schema(f)
        node = cfg._get_node(key)  # type: ignore[attr-defined]
        if nested is not None:
            if not isinstance(node, DictConfig):
                raise ConfigError(f"invalid value for {full_key}: expected a section of keys")
            validate_config(node, nested, prefix=f"{full_key}.")
            continue
        if isinstance(node, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(node, resolve=True)
        else:
            value = cfg[key]
        check_value(full_key, known[str(key)], value)
    if not prefix:
        validate_combinations(cfg)


def expand_paths(cfg: DictConfig, schema: type = TlrunConfig) -> None:
    """Expand ``~`` in every path key of the schema (``path_field``), in place."""
    import os

    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue
        nested = _nested_schema(f)
        if nested is not None:
            if isinstance(cfg[f.name], DictConfig):
                expand_paths(cfg[f.name], nested)
        elif f.metadata.get("path") and isinstance(cfg[f.name], str) and cfg[f.name].startswith("~"):
            cfg[f.name] = os.path.expanduser(cfg[f.name])


def numeric_fields_without_range(schema: type = TlrunConfig, prefix: str = "") -> list[str]:
    """Numeric keys declared without ``bounded``/``unbounded`` (the schema test keeps this empty)."""
    missing = []
    for f in dataclasses.fields(schema):
        nested = _nested_schema(f)
        if nested is not None:
            missing += numeric_fields_without_range(nested, f"{prefix}{f.name}.")
        elif _base_type(f)[0] in ("int", "float") and "low" not in f.metadata:
            missing.append(f"{prefix}{f.name}")
    return missing


def random_augmentations(augment: DictConfig) -> list[str]:
    """The data.augment keys set to a random transform (empty: training images are deterministic)."""
    active = {"random_resized_crop": augment.random_resized_crop, "hflip": augment.hflip, "vflip": augment.vflip,
              "rotation": augment.rotation > 0, "color_jitter": augment.color_jitter > 0,
              "auto": augment.auto != "none", "random_erasing": augment.random_erasing > 0,
              "mixup_alpha": augment.mixup_alpha > 0, "cutmix_alpha": augment.cutmix_alpha > 0}
    return [f"data.augment.{key}" for key, on in active.items() if on]


def validate_combinations(cfg: DictConfig) -> None:
    """Checks that involve several keys."""
    if cfg.train.cache_features == "on":
        random = random_augmentations(cfg.data.augment)
        if random:
            raise ConfigError(f"train.cache_features=on but {', '.join(random)} draw random transforms, so frozen "
                              "features differ every epoch; remove the augmentation or use train.cache_features=auto")
        if cfg.freeze.strategy in ("none", "discriminative"):
            raise ConfigError(f"train.cache_features=on needs a frozen backbone, but freeze={cfg.freeze.strategy} "
                              "trains every layer; use freeze=all|partial|early or train.cache_features=auto")
        if cfg.distill.method != "none" or cfg.adaptation.method != "none" or cfg.data.target or cfg.data.target_root:
            raise ConfigError("train.cache_features=on serves fine-tuning runs only (adaptation and distillation "
                              "train on images); use train.cache_features=auto")
    if cfg.data.mean is not None and cfg.data.std is not None and len(cfg.data.mean) != len(cfg.data.std):
        raise ConfigError("data.mean and data.std must have the same length")
    if cfg.train.get("progressive_resizing") and (cfg.adaptation.method != "none" or cfg.distill.method != "none"
                                                  or cfg.data.target is not None):
        raise ConfigError("train.progressive_resizing works with fine-tuning only; drop it or set "
                          "adaptation=none, distill=none and no data.target")
    if cfg.distill.method != "none" and cfg.distill.teacher:
        check_teacher_path(str(cfg.distill.teacher))


def check_teacher_path(teacher: str) -> None:
    """Fail before any data is loaded when distill.teacher names no model file (same words as the loader)."""
    path = Path(teacher).expanduser()
    if not (path.is_file() or (path / "ft_model.pt").is_file()):
        raise ConfigError(f"distill.teacher={teacher}: no ft_model.pt at {path}; "
                          "give a finished run folder or its ft_model.pt")
