"""Knowledge distillation: a fine-tuned teacher's soft targets train the run's model (the student).

``distill.teacher_logits`` says where the teacher's soft targets come from:

* cached: the teacher sees every training image once through its own evaluation transform (no
  augmentation); those logits are cached on disk, keyed by the teacher file's hash, the training
  images and the teacher's preprocessing. Cheap (a T×α sweep pays one teacher pass), but with random
  augmentation the student's view and the teacher's target no longer describe the same image.
* online: the frozen teacher runs on every training batch, on the same augmented view the student
  sees, rescaled and re-normalised to the teacher's own input geometry ("consistent" teaching,
  Beyer et al. 2022); costs one teacher forward pass per step.
* auto (default): online when data.augment draws random transforms, else cached.

When no ``distill.teacher`` is given, ``distill.teacher_model`` is fine-tuned first as a stage whose
run folder is cached by the hash of its config and of its data's content: a T×α sweep trains the
teacher once.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

import tlrun
from tlrun import distributed
from tlrun.artifacts import LoadedModel, load_run_model
from tlrun.cache import (cache_root, digest, file_digest, folder_digest, images_digest, is_intact, locked,
                         remove_entry, seal)
from tlrun.checkpoint import isolated_rng, load_file, remove_stale_temp_files, save_atomic
from tlrun.config import random_augmentations
from tlrun.data.datasets import ImageDataset, in_memory
from tlrun.data.loaders import PairedBatches, make_loader
from tlrun.data.sources import ImageSet
from tlrun.data.text import TextDataset, text_dataset, tokenizer_fingerprint
from tlrun.config.schema import is_text_run
from tlrun.models.text import TextInput, resolve_source
from tlrun.data.splits import RunData, left_out_images, load_run_data
from tlrun.data.transforms import ImageGeometry, batch_mixer, build_transform
from tlrun.engine import Engine, FitResult, Placement, StepOutput, TrainStep, hard_labels
from tlrun.errors import CheckpointError, ConfigError, DataError, WeightsError
from tlrun.freeze import count_params
from tlrun.methods import DISTILL
from tlrun.methods.kd import DistillationLoss, StudentStage
from tlrun.models.catalog import MODEL_DEFAULTS
from tlrun.models.timm_backbones import is_timm
from tlrun.pipelines.common import (PIPELINES, Loaders, PreparedModel, RunContext, base_metrics, make_engine,
                                    make_loaders, prepare_model, save_model_file,
                                    write_run_artifacts)

log = logging.getLogger(__name__)

DISPLAY_KEYS = ("progress", "plots")  # train.* keys left out of the teacher stage's cache key


class Indexed(Dataset):
    """(image, label, index): the step looks the cached teacher logits up by index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        return (*self.dataset[index], index)


class CachedTeacher:
    """Soft targets looked up by training-image index in the precomputed train-set logits."""

    mode = "cached"

    def __init__(self, logits: torch.Tensor, placement: Placement) -> None:
        self.logits, self.placement = logits.to(placement.device), placement

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.logits[index.to(self.placement.device)]


def to_teacher_view(images: torch.Tensor, student: ImageGeometry, teacher: ImageGeometry) -> torch.Tensor:
    """The student's (augmented, normalised) batch as the teacher's input: un-normalise, resize to the
    teacher's input size, normalise with the teacher's mean/std. The identity when both match."""
    same_norm = tuple(student.mean) == tuple(teacher.mean) and tuple(student.std) == tuple(teacher.std)
    if same_norm and images.shape[-1] == teacher.crop_size and images.shape[-2] == teacher.crop_size:
        return images

    def stats(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)

    pixels = images * stats(student.std) + stats(student.mean)
    if images.shape[-1] != teacher.crop_size or images.shape[-2] != teacher.crop_size:
        mode = teacher.interpolation if teacher.interpolation in ("bilinear", "bicubic") else "bilinear"
        pixels = F.interpolate(pixels, size=(teacher.crop_size, teacher.crop_size), mode=mode,
                               align_corners=False, antialias=True)
    return (pixels - stats(teacher.mean)) / stats(teacher.std)


class OnlineTeacher:
    """The frozen teacher (eval mode, no gradients) on the very batch the student trains on."""

    mode = "online"

    def __init__(self, teacher: LoadedModel, student_geometry: "ImageGeometry | TextInput",
                 placement: Placement) -> None:
        self.model = placement.model(teacher.model).eval().requires_grad_(False)
        self.student_geometry, self.teacher_geometry = student_geometry, teacher.geometry
        self.placement = placement
        if isinstance(student_geometry, TextInput) and input_key(student_geometry) != input_key(teacher.geometry):
            raise ConfigError("distill.teacher_logits=online feeds the teacher the student's token ids, but their "
                              "tokenizers or max_length differ; use distill.teacher_logits=cached (the teacher "
                              "reads the texts with its own tokenizer)")

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self.model.eval()  # stays frozen whatever mode the engine puts the student in
        with torch.no_grad():  # runs inside the engine's autocast, like the student's forward pass
            if isinstance(self.student_geometry, TextInput):
                return self.model(images).detach()
            return self.model(to_teacher_view(images, self.student_geometry, self.teacher_geometry)).detach()


def input_key(geometry: "ImageGeometry | TextInput") -> dict:
    """What decides the inputs a model reads: the image geometry, or the tokenizer and max_length."""
    if isinstance(geometry, TextInput):
        return {"max_length": geometry.max_length, "tokenizer": tokenizer_fingerprint(geometry.tokenizer)}
    return dict(geometry.__dict__)


def teacher_dataset(ctx: RunContext, teacher: LoadedModel, images: ImageSet) -> Dataset:
    """``images`` (or texts) as the teacher reads them: its own eval transform, or its own tokenizer."""
    if isinstance(teacher.geometry, TextInput):
        return text_dataset(images, teacher.geometry.tokenizer, teacher.geometry.max_length, cache_root(ctx.cfg))
    return ImageDataset(images, build_transform(teacher.geometry, None, train=False))


TeacherLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, training indices) -> logits


class DistillationStep(TrainStep):
    """Hinton KD on a labelled batch; with ``transfer_teacher`` a batch is (labelled, unlabelled transfer)
    and the soft-target term covers both, the hard-label term the labelled images only. The teachers are
    plain callables, not submodules: they never train and DDP never sees them.

    With a ``pre_stage`` (FitNet's hints) the step runs that stage's loss on all the batch's images until
    ``pre_stage_active`` is set to False, then the KD loss."""

    def __init__(self, model: nn.Module, placement: Placement, teacher: TeacherLogits, loss: DistillationLoss,
                 transfer_teacher: Optional[TeacherLogits] = None, pre_stage: Optional[StudentStage] = None) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.placement, self.teacher, self.transfer_teacher = placement, teacher, transfer_teacher
        self.pre_stage, self.pre_stage_active = pre_stage, pre_stage is not None
        # Each stage leaves parameters out (the hint stage the student's top, KD the regressor): DDP must know.
        self.find_unused_parameters = pre_stage is not None
        self.loss_uses_progress = bool(getattr(loss, "uses_progress", False))

    def forward(self, batch: Any, progress: float) -> StepOutput:
        if self.transfer_teacher is None:
            (images, targets, index), transfer = batch, None
        else:
            (images, targets, index), transfer = batch
        targets = self.placement.labels(targets)
        images = self.placement.images(images)
        count = len(images)
        if self.pre_stage is not None and self.pre_stage_active:
            if transfer is not None:  # hints need no labels: the transfer images take part too
                images = torch.cat([images, self.placement.images(transfer[0])])
            loss, logits, logs = self.pre_stage(images, progress)
            return StepOutput(loss, logits[:count], hard_labels(targets), logs)
        teacher = self.teacher(images, index).float()
        if transfer is not None:
            transfer_images, _no_labels, transfer_index = transfer
            transfer_images = self.placement.images(transfer_images)
            teacher = torch.cat([teacher, self.transfer_teacher(transfer_images, transfer_index).float()])
            images = torch.cat([images, transfer_images])
        # With MixUp/CutMix the targets are class probabilities (cross-entropy takes them as they are)
        # and the online teacher has seen the same mixed images.
        all_logits = self.model(images)
        if self.loss_uses_progress:
            loss, logs = self.loss(all_logits, teacher, targets, progress=progress)
        else:
            loss, logs = self.loss(all_logits, teacher, targets)
        return StepOutput(loss, all_logits[:count], hard_labels(targets), logs)


def teacher_logits_mode(cfg: DictConfig) -> str:
    """distill.teacher_logits resolved: auto is online when the student's training images go through
    random transforms (a cached logit would describe another view of the image), else cached."""
    mode = cfg.distill.get("teacher_logits", "auto")
    if mode == "auto":
        return "online" if random_augmentations(cfg.data.augment) else "cached"
    if mode == "cached" and random_augmentations(cfg.data.augment):
        log.warning("distill.teacher_logits=cached with %s: the teacher's targets describe the un-augmented "
                    "images, not the student's views; distill.teacher_logits=online keeps them consistent",
                    ", ".join(random_augmentations(cfg.data.augment)))
    return mode


def teacher_stage(ctx: RunContext, classes: Optional[list[str]] = None) -> tuple[Path, str]:
    """Fine-tune distill.teacher_model (or reuse the cached stage), on ``classes`` only when given
    (meta-distillation keeps the held-out classes from the teacher).

    The stage is keyed by its config *and the content of its data*, so edited images train a new teacher.
    It runs with its own random stream seeded by ``seed`` (as a separate run would) and hands the caller
    its RNG state back: a KD run gives the same student whether its teacher was trained now or loaded.
    An interrupted stage resumes from its own checkpoint; a corrupt one is rebuilt."""
    cfg = ctx.cfg
    teacher_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    name = cfg.distill.teacher_model
    if is_text_run(cfg):  # a text teacher: minilm, or hf/<hub id or folder>
        teacher_cfg.model = {"name": name[len("hf/"):] if name.startswith("hf/") else name, "weights": "DEFAULT",
                             "weights_path": None, "library": "hf", "num_layers": None,
                             "pooling": "auto"}  # the teacher's own folder decides; model.pooling is the student's
    elif name not in MODEL_DEFAULTS and not is_timm(name):
        raise ConfigError(f"unknown distill.teacher_model '{name}'; use a name that model= accepts "
                          "(timm models as timm/<name>)")
    else:
        teacher_cfg.model = {"name": name, "weights": "DEFAULT", "weights_path": None, "library": "auto",
                             **MODEL_DEFAULTS.get(name, {})}
    teacher_cfg.freeze.strategy = cfg.distill.teacher_freeze
    teacher_cfg.train.epochs = cfg.distill.teacher_epochs
    teacher_cfg.train.progress = cfg.train.progress
    teacher_cfg.train.resume = None  # the student's resume is not the stage's
    teacher_cfg.distill = {"method": "none"}
    teacher_cfg.adaptation = {"method": "none"}
    if cfg.distill.teacher_image_size:
        teacher_cfg.data.image_size, teacher_cfg.data.resize_size = cfg.distill.teacher_image_size, None
    if classes is not None:
        teacher_cfg.data.classes = list(classes)
    data = load_run_data(teacher_cfg.data, cfg.seed)
    # What decides the teacher's weights: model, freeze, data (config and content), recipe, seed, code version.
    # The display keys (progress bar, plots) change how the stage runs, not the teacher it trains.
    recipe = {k: v for k, v in OmegaConf.to_container(teacher_cfg.train).items() if k not in DISPLAY_KEYS}
    model_key, label = OmegaConf.to_container(teacher_cfg.model), Path(name).name
    if is_text_run(cfg):  # a local folder (minilm's included) counts by its files, not by where it is
        source = Path(resolve_source(str(teacher_cfg.model.name)))
        if source.is_dir():
            model_key["name"] = {"files": folder_digest(source)}
            if Path(str(teacher_cfg.model.name)).expanduser().is_dir():  # a user's folder: named by content only
                label = "hf-folder"
    key = digest({"model": model_key} | {k: OmegaConf.to_container(teacher_cfg[k]) for k in ("freeze", "data")}
                 | {"train": recipe}
                 | {"images": {split: images_digest(images) for split, images in data.splits.items()},
                    "seed": cfg.seed, "tlrun": tlrun.__version__})
    stage_dir = cache_root(ctx.cfg) / "teachers" / f"{label}-{key}"
    with locked(stage_dir.with_suffix(".lock")):
        if is_intact(stage_dir / "ft_model.pt", "teacher stage model"):
            log.info("Teacher stage: cache hit, reusing %s", stage_dir)
            return stage_dir, "stage cache hit"
        resuming = (stage_dir / "checkpoints" / "last.pt").is_file() and not (stage_dir / "metrics.json").is_file()
        if not resuming and stage_dir.exists():
            remove_entry(stage_dir)  # what a failed or corrupt stage left: start it clean
        started = time.perf_counter()
        try:
            train_stage(ctx, teacher_cfg, stage_dir, data, resuming)
        except CheckpointError as exc:
            if not resuming:
                raise
            log.warning("Teacher stage: cannot resume %s (%s); training it again", stage_dir, exc)
            remove_entry(stage_dir)
            train_stage(ctx, teacher_cfg, stage_dir, data, False)
        seal(stage_dir / "ft_model.pt")
        log.info("Teacher stage took %.1f s", time.perf_counter() - started)
        return stage_dir, "stage resumed" if resuming else "stage trained"


def train_stage(ctx: RunContext, teacher_cfg: DictConfig, stage_dir: Path, data: RunData, resume: bool) -> None:
    from tlrun.pipelines.finetune import run_finetune

    log.info("Teacher stage: %s %s into %s", "resuming" if resume else "fine-tuning", teacher_cfg.model.name,
             stage_dir)
    teacher_cfg.train.resume = str(stage_dir) if resume else None
    stage_dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun the rank that holds the stage's lock trains it alone (the others wait for the lock, then
    # load it): a stage is one process's run, whatever the student's world size.
    with isolated_rng(teacher_cfg.seed), distributed.single_process():
        run_finetune(RunContext(teacher_cfg, stage_dir, ctx.device), data)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, placement: Placement) -> torch.Tensor:
    model.eval()
    return torch.cat([model(placement.images(images)).float().cpu() for images, *_ in loader])


def teacher_logits_of(ctx: RunContext, teacher: LoadedModel, teacher_file: Path, data_name: str,
                      images: ImageSet, set_name: str = "train") -> tuple[torch.Tensor, str]:
    """The teacher's logits for every image of ``images`` (``set_name`` names them in the log: train,
    transfer, test), cached; never stale: the key covers the teacher weights, the images and the teacher's
    preprocessing."""
    key = digest({"teacher": file_digest(teacher_file), "data": data_name, "images": images_digest(images),
                   "geometry": input_key(teacher.geometry)})
    path = cache_root(ctx.cfg) / "teacher_logits" / f"{key}.pt"
    with locked(path.with_suffix(".lock")):
        remove_stale_temp_files(path.parent)
        if is_intact(path, "teacher-logit cache"):
            try:
                cached = load_file(path, "a teacher-logit cache entry")
            except CheckpointError as exc:  # resealed by hand: never trusted, rebuilt
                cached = f"an unreadable file ({exc})"
            if isinstance(cached, torch.Tensor) and cached.dim() == 2 and cached.shape == (len(images), len(teacher.classes)):
                log.info("Teacher logits (%s): cache hit (%s)", set_name, path.name)
                return cached, "hit"
            log.warning("Ignoring teacher-logit cache %s: it holds %s, not %d x %d logits; rebuilding it", path,
                        tuple(cached.shape) if isinstance(cached, torch.Tensor) else cached,
                        len(images), len(teacher.classes))
            remove_entry(path)
        log.info("Teacher logits (%s): computing %d once (cache %s)", set_name, len(images), path.name)
        dataset = teacher_dataset(ctx, teacher, images)
        # A DataLoader iterator draws its base seed from the global RNG: without the fork, a cache miss
        # would shift the student's dropout/augmentation stream and a run would depend on the cache state.
        with torch.random.fork_rng(devices=[]):
            logits = predict_logits(teacher.model, make_loader(dataset, ctx.cfg.train.eval_batch_size, False, 0,
                                                               collate=getattr(dataset, "collate", None)),
                                    ctx.placement)
        save_atomic(logits, path)
        seal(path)
        return logits, "miss"


@torch.inference_mode()
def latency_ms(model: nn.Module, geometry: "int | ImageGeometry | TextInput", repeats: int = 30) -> float:
    """Median batch-1 CPU inference time of a CPU copy of ``model`` (the model itself is left as it is) on one
    image of its input size (a geometry or a side in pixels), or one text of max_length tokens."""
    model = copy.deepcopy(model).to("cpu").eval()
    if isinstance(geometry, TextInput):
        x = torch.full((1, geometry.max_length), int(getattr(model, "pad_token_id", 0)) + 1, dtype=torch.int64)
    else:
        side = geometry if isinstance(geometry, int) else geometry.crop_size
        x = torch.zeros(1, 3, side, side)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def load_teacher(ctx: RunContext, classes: Optional[list[str]] = None) -> tuple[LoadedModel, Path, str]:
    """distill.teacher (a run folder or ft_model.pt), else the cached teacher stage."""
    if ctx.cfg.distill.teacher:
        teacher_path = Path(ctx.cfg.distill.teacher).expanduser()
        teacher_file = teacher_path / "ft_model.pt" if teacher_path.is_dir() else teacher_path
        return load_run_model(teacher_file, ctx.device), teacher_file, "distill.teacher"
    stage_dir, teacher_source = teacher_stage(ctx, classes)
    try:
        return load_run_model(stage_dir / "ft_model.pt", ctx.device), stage_dir / "ft_model.pt", teacher_source
    except WeightsError as exc:  # a stage resealed by hand: a cache entry is rebuilt, never trusted
        log.warning("Ignoring teacher stage %s (%s); training it again", stage_dir, exc)
        remove_entry(stage_dir)
        stage_dir, teacher_source = teacher_stage(ctx, classes)
        return load_run_model(stage_dir / "ft_model.pt", ctx.device), stage_dir / "ft_model.pt", teacher_source


def check_same_classes(teacher: LoadedModel, data: RunData) -> None:
    if teacher.classes != data.classes:
        raise DataError(f"teacher classes ({', '.join(teacher.classes[:5])}...; {len(teacher.classes)}) differ from "
                        f"the data's ({', '.join(data.classes[:5])}...; {len(data.classes)}); distill on the data "
                        "the teacher was trained on")


def mixes_batches(cfg: DictConfig) -> bool:
    return cfg.data.augment.mixup_alpha > 0 or cfg.data.augment.cutmix_alpha > 0


def refuse_cached_batch_mixing(cfg: DictConfig) -> None:
    """MixUp/CutMix need the teacher on the mixed images (function matching, Beyer et al. 2022): a cached
    logit describes one unmixed image, and the teacher's logits of a mix are not the mix of its logits."""
    if mixes_batches(cfg) and teacher_logits_mode(cfg) == "cached":
        raise ConfigError("data.augment.mixup_alpha/cutmix_alpha mix images, which cached teacher logits cannot "
                          "describe; use distill.teacher_logits=online (or auto), or set the alphas to 0")


def refuse_batch_mixing(cfg: DictConfig, why: str) -> None:
    if mixes_batches(cfg):
        raise ConfigError(f"{why} does not support MixUp/CutMix; set data.augment.mixup_alpha=0 "
                          "data.augment.cutmix_alpha=0")


def check_kd_options(cfg: DictConfig) -> None:
    refuse_cached_batch_mixing(cfg)
    if cfg.distill.get("transfer_images"):
        refuse_batch_mixing(cfg, "distill.transfer_images (unlabelled images have no labels to mix)")


def distillation_loss_of(cfg: DictConfig) -> nn.Module:
    """The loss of the distillation method the run names (a method registered for the kd pipeline builds
    it from its node: ``build(cfg.distill, label_smoothing)``); Hinton KD for the few-shot kd_finetune mode."""
    spec = DISTILL.spec(cfg.distill.method)
    loss_type = spec.build if spec.pipeline == "kd" and spec.build is not None else DistillationLoss
    return loss_type.from_config(cfg.distill, cfg.train.label_smoothing)


@dataclass
class StudentFit:
    engine: Engine
    fit: FitResult
    loaders: Loaders
    logits_cache: str  # hit | miss (cached mode), none (online mode)
    logits_mode: str  # cached | online
    transfer_images: int  # unlabelled transfer images in the soft-target term (distill.transfer_images)
    method_metrics: dict = field(default_factory=dict)  # the loss's own settings (DistillationLoss.metrics)


def run_pre_stage(engine: Engine, step: DistillationStep, stage: StudentStage, train_loader: Any,
                  val_loader: Optional[DataLoader], kd_epochs: int) -> None:
    """The stage's epochs first, as a phase of the run's Engine (one history, epochs numbered on), then
    the KD phase with a fresh learning-rate schedule; the KD phase selects the best epoch on its own."""
    log.info("Student pre-stage '%s': %d epochs before %d KD epochs", stage.name, stage.epochs, kd_epochs)
    patience, engine.patience = engine.patience, None  # an untrained head's val_acc says nothing yet
    engine.start_phase(train_loader, val_loader, stage.epochs, columns={f"{stage.name}_stage": 1})
    try:
        engine.fit()
    finally:
        stage.close()  # the feature hooks go: KD and the teacher's test pass run the models whole
    step.pre_stage_active = False
    engine.patience = patience
    engine.start_phase(train_loader, val_loader, kd_epochs, columns={f"{stage.name}_stage": 0})


def fit_kd_student(ctx: RunContext, data: RunData, teacher: LoadedModel, teacher_file: Path,
                   prepared: PreparedModel) -> StudentFit:
    """Train the prepared student on ``data`` with Hinton KD from the teacher's soft targets, cached
    or online (distill.teacher_logits); the best val checkpoint is restored."""
    cfg = ctx.cfg
    augment = cfg.data.augment
    check_kd_options(cfg)
    check_same_classes(teacher, data)
    loss = distillation_loss_of(cfg)
    mode = teacher_logits_mode(cfg)
    transfer = None
    if cfg.distill.get("transfer_images"):
        transfer = left_out_images(cfg.data, cfg.seed, data, cfg.distill.transfer_images)
        log.info("Transfer set: %d unlabelled images of %s outside the run's splits join the soft-target term",
                 len(transfer), data.name)
    transfer_source: Optional[Callable] = None
    if mode == "online":
        source: Callable = OnlineTeacher(teacher, prepared.geometry, ctx.placement)
        transfer_source = source if transfer is not None else None
        logits_cache = "none"
        log.info("Teacher logits: online (the frozen teacher runs on each augmented training batch)")
    else:
        logits, logits_cache = teacher_logits_of(ctx, teacher, teacher_file, data.name, data.splits["train"])
        source = CachedTeacher(logits, ctx.placement)
        if transfer is not None:
            transfer_logits, transfer_cache = teacher_logits_of(ctx, teacher, teacher_file, data.name, transfer,
                                                                "transfer")
            transfer_source = CachedTeacher(transfer_logits, ctx.placement)
            logits_cache = logits_cache if logits_cache == transfer_cache else "partial hit"
    loaders = make_loaders(ctx, data, prepared.geometry)
    if isinstance(prepared.geometry, TextInput):  # the student's own token ids (tokenised once, cached)
        train_set: Dataset = loaders.train.dataset
        transfer_set = text_dataset(transfer, prepared.geometry.tokenizer, prepared.geometry.max_length,
                                    cache_root(cfg)) if transfer is not None else None
        collate, mixer = TextDataset.collate, None
    else:
        train_tf = build_transform(prepared.geometry, augment, train=True)
        train_set = ImageDataset(loaders.train.dataset.images, train_tf)  # decoded once into memory when small
        transfer_set = ImageDataset(in_memory(transfer, prepared.geometry, cfg.data.in_memory_max_mb,
                                              cfg.device.num_workers, "transfer"), train_tf) \
            if transfer is not None else None
        collate, mixer = None, batch_mixer(augment, len(data.classes))
    train_loader: Any = make_loader(Indexed(train_set), cfg.train.batch_size, True, cfg.seed, cfg.device.num_workers,
                                    mixer or collate)
    if transfer_set is not None:
        # An epoch is one pass over the longer of the two sets; the shorter one is cycled.
        train_loader = PairedBatches(train_loader, make_loader(Indexed(transfer_set), cfg.train.batch_size, True,
                                                               cfg.seed + 1, cfg.device.num_workers, collate))
    # After the teacher-logit passes: a pre-stage's feature hooks stop the teacher's forward at its layer.
    pre_stage = loss.pre_stage(prepared.model, prepared.geometry, teacher, ctx.placement) \
        if isinstance(loss, DistillationLoss) else None
    step = DistillationStep(prepared.model, ctx.placement, source, loss, transfer_source, pre_stage)
    groups = []
    if pre_stage is not None and any(p.requires_grad for p in pre_stage.parameters()):
        groups.append({"params": [p for p in pre_stage.parameters() if p.requires_grad], "lr": cfg.train.lr,
                       "stage": pre_stage.name})
    engine = make_engine(ctx, prepared, step, train_loader, loaders.val, groups, auxiliary=pre_stage)
    if pre_stage is not None:
        run_pre_stage(engine, step, pre_stage, train_loader, loaders.val, cfg.train.epochs)
    fit = engine.fit()
    engine.load_best()
    return StudentFit(engine, fit, loaders, logits_cache, mode, len(transfer) if transfer is not None else 0,
                      loss.metrics() if isinstance(loss, DistillationLoss) else {})


@PIPELINES.register("kd")
def run_kd(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    check_kd_options(cfg)  # before a teacher stage spends minutes
    data = load_run_data(cfg.data, cfg.seed)
    teacher, teacher_file, teacher_source = load_teacher(ctx)
    check_same_classes(teacher, data)
    prepared = prepare_model(ctx, len(data.classes))
    student = fit_kd_student(ctx, data, teacher, teacher_file, prepared)
    fit = student.fit
    test = student.engine.evaluate(student.loaders.test)
    # Cached like the train logits: the jobs of a T×alpha sweep share one teacher pass over the test set too.
    teacher_test_logits, _ = teacher_logits_of(ctx, teacher, teacher_file, data.name, data.splits["test"], "test")
    teacher_acc = float((teacher_test_logits.argmax(1).numpy() == data.splits["test"].labels).mean())
    save_model_file(ctx, prepared, data)

    metrics = base_metrics(ctx, "kd", prepared, data, fit, test)
    params_teacher, params_student = count_params(teacher.model.parameters()), metrics["params_total"]
    metrics.update({
        "distill_method": cfg.distill.method,
        "teacher": str(teacher_file),
        "teacher_model": teacher.model_name,
        "teacher_source": teacher_source,
        "teacher_logits": student.logits_mode,
        "teacher_logits_cache": student.logits_cache,
        "transfer_images": student.transfer_images,
        "epoch_time_s_mean": float(fit.history["epoch_time_s"].mean()) if len(fit.history) else None,
        "temperature": cfg.distill.temperature,
        "alpha": cfg.distill.alpha,
        "teacher_test_acc": teacher_acc,
        "student_test_acc": test.acc,
        "params_teacher": params_teacher,
        "params_student": params_student,
        "compression_ratio": params_teacher / params_student,
        **student.method_metrics,
    })
    if cfg.distill.get("latency"):  # after the run's own results, on copies: training never pays for it
        metrics.update(latency_ms_teacher=latency_ms(teacher.model, teacher.geometry),
                       latency_ms_student=latency_ms(prepared.model, prepared.geometry))
    write_run_artifacts(ctx, metrics, test, data.classes, history=fit.history, data=data)
    return metrics
