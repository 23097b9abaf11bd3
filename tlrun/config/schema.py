"""Typed schema of a tlrun run, registered in Hydra's ConfigStore.

Every composed config is merged onto these dataclasses, so Hydra rejects unknown keys and wrong
types for plain overrides. The method groups (``adaptation``, ``distill``) are open sections here:
each method's node has its own schema (``tlrun.config.methods`` and the method's module), looked up by
``tlrun.config.validate`` through the method registry.

This module must stay light: ``tlrun --help`` and tab completion import it (no torch here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from tlrun.config.fields import bounded, check_channel_stats, check_split, choice, path_field
from tlrun.config.logger import LoggerConfig
from tlrun.config.methods import FREEZE_STRATEGIES
from tlrun.errors import ConfigError

# Config groups that compose a run. Each mirrors a module of the package.
GROUPS = ("model", "freeze", "adaptation", "distill", "data", "device", "logger")
# Groups with no default that only layer overrides on top (``# @package _global_`` files).
OVERLAY_GROUPS = ("experiment", "hparams_search")
# Groups whose node is chosen by its ``method`` key (tlrun.methods registries).
METHOD_GROUPS = ("adaptation", "distill")


# Datasets of texts (tlrun.data.text): they need a text model, and a text model needs one of them.
TEXT_DATASETS = ("textcsv", "textfolder", "rotten_tomatoes", "bbc_news")
TEXT_DISTILL_METHODS = ("none", "kd", "dkd")


def is_text_run(cfg: DictConfig) -> bool:
    return str(cfg.data.name) in TEXT_DATASETS


def check_modality(cfg: DictConfig) -> None:
    """Text data with a text model, images with a vision model; what text runs do not support, refused."""
    text_model = cfg.model.library == "hf" or str(cfg.model.name).startswith("hf/")
    if is_text_run(cfg) and not text_model:
        raise ConfigError(f"data={cfg.data.name} is text but model={cfg.model.name} is a vision model; use a text "
                          "model: model=minilm, or model=hf model.name=<hub id or local folder>")
    if text_model and not is_text_run(cfg):
        raise ConfigError(f"model={cfg.model.name} is a text model but data={cfg.data.name} holds images; give it "
                          f"text data ({', '.join('data=' + d for d in TEXT_DATASETS)}) or use a vision model")
    if cfg.data.get("target") in TEXT_DATASETS:
        raise ConfigError(f"data.target={cfg.data.target} is a text set; domain adaptation works on images only: "
                          "give an image dataset as data.target")
    if not text_model:
        return
    if cfg.adaptation.method != "none" or cfg.data.target is not None or cfg.data.target_root is not None:
        raise ConfigError("domain adaptation (adaptation=, data.target) works on images only; a text run "
                          "fine-tunes or distils: drop adaptation= and data.target")
    if cfg.distill.method not in TEXT_DISTILL_METHODS:
        raise ConfigError(f"distill={cfg.distill.method} works on images only; text runs take "
                          f"{' or '.join('distill=' + m for m in TEXT_DISTILL_METHODS[1:])}")
    teacher_model = str(cfg.distill.get("teacher_model", ""))
    if cfg.distill.method != "none" and not cfg.distill.get("teacher") and teacher_model != "minilm" \
            and not teacher_model.startswith("hf/"):
        raise ConfigError(f"distill.teacher_model={teacher_model} is a vision model; a text run's teacher stage "
                          "takes distill.teacher_model=minilm or hf/<hub id or folder> (or distill.teacher=<a text "
                          "run>)")
    random = random_augmentations(cfg.data.augment)
    if random:
        raise ConfigError(f"{', '.join(random)} transform images; a text run takes no data.augment")
    if cfg.train.get("progressive_resizing"):
        raise ConfigError("train.progressive_resizing resizes images; drop it for a text run")


@dataclass
class ModelConfig:
    name: str = field(default="mobilenet_v2", metadata={
        "help": "Architecture: any torchvision classifier, or tlrun's own efficientnet_lite0, lenet, small_resnet, "
                "conv4"})
    weights: Optional[str] = field(default="DEFAULT", metadata={
        "help": "Pretrained weights: DEFAULT (torchvision's recommended), an enum member name such as IMAGENET1K_V1, "
                "or null for random init"})
    weights_path: Optional[str] = path_field(
        help="A local .pth for the architecture (a state dict, or a checkpoint holding one under state_dict/model); "
             "timm models also take .safetensors")
    library: str = choice("auto", ("auto", "timm", "hf"),
                          help="Where model.name comes from: auto (tlrun's own, then torchvision; a timm/ prefix "
                               "means timm), timm (model=timm: any timm.list_models() name, with its pretrained "
                               "tag, e.g. convnext_tiny.fb_in22k) or hf (model=hf: a Hugging Face text encoder, "
                               "a hub id or a local folder; model=minilm: the offline all-MiniLM-L6-v2)")
    num_layers: Optional[int] = bounded(None, low=1,
                                        help="Text models: keep this many evenly spaced encoder layers of the "
                                             "pretrained model (a smaller KD student); null = all")
    pooling: str = choice("auto", ("auto", "cls", "mean"),
                          help="Text models: what the head reads: cls (the architecture's own head on the [CLS] "
                               "token, BERT's pooler), mean (the mean of the last layer over the real tokens, as "
                               "sentence-transformers models are trained), auto (mean when the model folder says "
                               "so in its sentence-transformers modules.json, e.g. model=minilm; else cls)")

    @staticmethod
    def check(cfg: DictConfig) -> None:
        check_modality(cfg)
        text_model = cfg.model.library == "hf" or str(cfg.model.name).startswith("hf/")
        if cfg.model.num_layers is not None and not text_model:
            raise ConfigError(f"model.num_layers is for text models (model=minilm, model=hf); drop it for "
                              f"model={cfg.model.name}")
        if cfg.model.get("pooling", "auto") != "auto" and not text_model:
            raise ConfigError(f"model.pooling is for text models (model=minilm, model=hf); drop it for "
                              f"model={cfg.model.name}")


@dataclass
class FreezeConfig:
    strategy: str = choice("none", FREEZE_STRATEGIES,
                           help="What trains: none (everything), all (the head only), partial (the last stages "
                                "+ head), early (all but the first half of the stages), discriminative (everything, "
                                "lr per stage)")
    # A stage = the blocks that output features at one spatial resolution (found by a probe forward pass).
    trainable_stages: int = bounded(1, low=1, help="freeze=partial: how many of the last stages train (with the head)")
    lr_decay: float = bounded(2.6, low=1.0,
                              help="freeze=discriminative: stage k below the head trains at train.lr / lr_decay**k "
                                   "(ULMFiT uses 2.6)")
    # ~10x below the head's is the usual practice; pretrained backbones only (random init trains at train.lr).
    backbone_lr_mult: float = bounded(0.1, low=0.0, low_open=True,
                                      help="A pretrained backbone's trainable stages learn at this x train.lr (the "
                                           "head at train.lr); random-init models ignore it")
    head_warmup_epochs: int = bounded(0, low=0,
                                      help="LP-FT: the first N of train.epochs train the head alone (backbone "
                                           "frozen, BatchNorm in eval), then the strategy's stages join")
    # Frozen BatchNorm layers keep their ImageNet statistics (eval mode) unless this is true.
    train_frozen_bn: bool = field(default=False, metadata={
        "help": "Let frozen BatchNorm layers update their running statistics (else they keep the pretrained "
                "ones)"})

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """LP-FT must leave epochs for the fine-tuning phase (else the backbone never trains)."""
        warmup, epochs = cfg.freeze.head_warmup_epochs, cfg.train.epochs
        if warmup and cfg.freeze.strategy != "all" and not cfg.train.get("progressive_resizing") and warmup >= epochs:
            raise ConfigError(f"freeze.head_warmup_epochs={warmup} leaves none of train.epochs={epochs} for "
                              f"freeze={cfg.freeze.strategy}; use fewer warm-up epochs or more train.epochs "
                              "(freeze=all is the head-only run)")


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
                               metadata={"validator": check_split,
                                         "help": "Train/val/test fractions when the source has no fixed split"})
    image_size: Optional[int] = bounded(None, low=8,
                                        help="Input size fed to the model; null follows the weights' own transforms "
                                             "(e.g. 224)")
    resize_size: Optional[int] = bounded(None, low=8,
                                         help="Size images are resized to before the centre crop to image_size; "
                                              "null = image_size if set, else the weights' own")
    mean: Optional[List[float]] = field(default=None, metadata={
        "validator": lambda v: check_channel_stats(v, False),
        "help": "Normalisation mean: one value for every channel, or three (R, G, B); null = the weights' own"})
    std: Optional[List[float]] = field(default=None, metadata={
        "validator": lambda v: check_channel_stats(v, True),
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
    # Text data (data=textcsv|textfolder|rotten_tomatoes|bbc_news); image keys above do not apply to it.
    path: Optional[str] = path_field(
        help="data=textcsv: the .csv, .tsv or .jsonl file of labelled texts")
    text_column: str = field(default="text", metadata={"help": "data=textcsv: the column that holds the texts"})
    label_column: str = field(default="label", metadata={
        "help": "data=textcsv: the column that holds the labels (its distinct values are the classes)"})
    encoding: str = field(default="utf-8", metadata={
        "help": "data=textcsv/textfolder: the files' text encoding (under the default, textfolder reads a "
                "file that is not UTF-8 as Latin-1, with a warning)"})
    max_length: int = bounded(128, low=8,
                              help="Text data: texts are truncated to this many tokens (special tokens "
                                   "included); batches are padded to their longest text")
    # Setting it without adaptation= gives the source-only baseline with target evaluation.
    target: Optional[str] = field(default=None, metadata={
        "help": "Domain adaptation: the unlabelled target domain (a dataset name, or imagefolder); null = none"})
    target_root: Optional[str] = path_field(
        help="Domain adaptation: the target's image folder (implies data.target=imagefolder when that is null)")
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={
        "help": "Augmentations of the training split (torchvision.transforms.v2)"})

    @staticmethod
    def check(cfg: DictConfig) -> None:
        if cfg.data.mean is not None and cfg.data.std is not None and len(cfg.data.mean) != len(cfg.data.std):
            raise ConfigError("data.mean and data.std must have the same length")


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
    # DistributedDataParallel under torchrun: BatchNorm statistics over every rank's batch (SyncBatchNorm).
    sync_batchnorm: bool = field(default=False, metadata={
        "help": "torchrun: convert BatchNorm layers to SyncBatchNorm (statistics over all ranks' batches; CUDA only)"})
    gpu_per_job: bool = field(default=False, metadata={
        "help": "Parallel sweep jobs on one multi-GPU box (hydra/launcher=joblib): job n uses GPU n mod #GPUs"})


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = bounded(None, low=1,
                                      help="Stop after this many epochs without val improvement; null = off")
    min_delta: float = bounded(0.0, low=0.0, help="Smallest val improvement that resets the patience")


def random_augmentations(augment: DictConfig) -> list[str]:
    """The data.augment keys set to a random transform (empty: training images are deterministic)."""
    active = {"random_resized_crop": augment.random_resized_crop, "hflip": augment.hflip, "vflip": augment.vflip,
              "rotation": augment.rotation > 0, "color_jitter": augment.color_jitter > 0,
              "auto": augment.auto != "none", "random_erasing": augment.random_erasing > 0,
              "mixup_alpha": augment.mixup_alpha > 0, "cutmix_alpha": augment.cutmix_alpha > 0}
    return [f"data.augment.{key}" for key, on in active.items() if on]


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
                                         help="Clip the gradients' global norm to this value (the network's, and a "
                                         "method's own layers' apart, e.g. DANN's discriminator); null = no clipping")
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig, metadata={
        "help": "Stop training when val_acc stops improving"})
    progress: str = choice("auto", ("auto", "rich", "plain", "none"),
                           help="Progress display: auto (a rich bar on a terminal, one line per epoch otherwise), "
                                "rich, plain, none")
    plots: bool = field(default=True, metadata={
        "help": "Draw the run's plots (curves.png, confusion_matrix.png, adaptation's features.png); false "
                "skips them (~0.7 s a run: sweeps of many short jobs, tests)"})
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

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """The feature cache and progressive resizing serve plain fine-tuning runs only."""
        other_pipeline = (cfg.distill.method != "none" or cfg.adaptation.method != "none"
                          or cfg.data.target is not None or cfg.data.target_root is not None)
        if cfg.train.cache_features == "on":
            random = random_augmentations(cfg.data.augment)
            if random:
                raise ConfigError(f"train.cache_features=on but {', '.join(random)} draw random transforms, so "
                                  "frozen features differ every epoch; remove the augmentation or use "
                                  "train.cache_features=auto")
            if cfg.freeze.strategy in ("none", "discriminative"):
                raise ConfigError(f"train.cache_features=on needs a frozen backbone, but freeze={cfg.freeze.strategy} "
                                  "trains every layer; use freeze=all|partial|early or train.cache_features=auto")
            if other_pipeline:
                raise ConfigError("train.cache_features=on serves fine-tuning runs only (adaptation and "
                                  "distillation train on images); use train.cache_features=auto")
        if cfg.train.get("progressive_resizing") and other_pipeline:
            raise ConfigError("train.progressive_resizing works with fine-tuning only; drop it or set "
                              "adaptation=none, distill=none and no data.target")


@dataclass
class TlrunConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "The network: architecture and pretrained weights (group model=)"})
    freeze: FreezeConfig = field(default_factory=FreezeConfig, metadata={
        "help": "Which layers train (group freeze=)"})
    adaptation: Dict[str, Any] = field(default_factory=lambda: {"method": "none"}, metadata={
        "help": "Unsupervised domain adaptation to data.target (group adaptation=)", "method_group": True})
    distill: Dict[str, Any] = field(default_factory=lambda: {"method": "none"}, metadata={
        "help": "Knowledge distillation and few-shot meta-distillation (group distill=)", "method_group": True})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "Dataset, splits, preprocessing and augmentation (group data=)"})
    device: DeviceConfig = field(default_factory=DeviceConfig, metadata={
        "help": "Hardware, precision and data loading (group device=)"})
    logger: LoggerConfig = field(default_factory=LoggerConfig, metadata={
        "help": "Experiment trackers: TensorBoard, MLflow (group logger=)"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "Optimisation: epochs, batch size, optimizer, schedule, early stopping"})
    # numpy and scikit-learn need 0 <= seed < 2**32.
    seed: int = bounded(0, low=0, high=2**32 - 1,
                        help="Seeds Python, NumPy and torch: the splits, initialisation and data order")
    optimized_metric: Optional[str] = field(default=None, metadata={
        "help": "The metrics.json key a run returns to a Hydra sweeper that optimises (hparams_search=...)"})


SCHEMA_NAME = "tlrun_schema"


def register_configs() -> None:
    """Register the schema and the generated group options in Hydra's ConfigStore (once per process:
    storing ~100 model nodes costs ~0.3 s, and every command, in-process test run included, asks)."""
    from hydra.core.config_store import ConfigStore

    from tlrun.models.catalog import MODEL_DEFAULTS
    from tlrun.rundir import register_resolver

    register_resolver()
    store = ConfigStore.instance()
    if f"{SCHEMA_NAME}.yaml" in store.repo and "timm.yaml" in store.repo.get("model", {}):
        return  # the last entry below is there: all of them are
    store.store(name=SCHEMA_NAME, node=TlrunConfig)
    # One option per known model name, so `model=<any torchvision classifier>` composes
    # (and tab-completes) without a YAML file per architecture.
    for name, overrides in MODEL_DEFAULTS.items():
        store.store(group="model", name=name, node=ModelConfig(name=name, **overrides))
    # model=timm model.name=<any timm name>: a ResNet-50 with timm's A1 recipe unless a name is given.
    # model=hf model.name=<hub id or folder>: a Hugging Face text encoder; model=minilm: the offline one.
    store.store(group="model", name="hf", node=ModelConfig(name="sentence-transformers/all-MiniLM-L6-v2",
                                                            library="hf"))
    store.store(group="model", name="minilm", node=ModelConfig(name="minilm", library="hf"))
    store.store(group="model", name="timm", node=ModelConfig(name="resnet50.a1_in1k", library="timm"))


