"""Pieces every pipeline shares: run context, model + freeze plan, loaders, optimizer, artefacts."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import tlrun
from tlrun import distributed
from tlrun.checkpoint import save_atomic
from tlrun.data.datasets import ImageDataset, in_memory
from tlrun.data.loaders import make_loader
from tlrun.data.splits import RunData
from tlrun.data.transforms import ImageGeometry, batch_mixer, build_transform
from tlrun.engine import Engine, EvalResult, FitResult, Placement, TrainStep
from tlrun.errors import ConfigError
from tlrun.freeze import FreezePlan, count_params, make_plan
from tlrun.models.factory import BuiltModel, build_model
from tlrun.models.text import TextInput
from tlrun.models.text import model_record as text_record
from tlrun.models.timm_backbones import model_id
from tlrun.registry import Registry
from tlrun.report import plot_confusion, plot_curves, print_summary, write_classification_report, write_json
from tlrun.tracking import Tracker

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MODEL_FILE_FORMAT = "tlrun-model/1"


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    tracker: Tracker = field(default_factory=Tracker)  # logger=...; nested runs (teacher stage) report nowhere

    @property
    def placement(self) -> Placement:
        return Placement(self.device, bool(self.cfg.device.channels_last), self.cfg.device.amp)


Pipeline = Callable[[RunContext], dict]
PIPELINES: Registry[Pipeline] = Registry("pipeline", "adaptation=/distill=")


@dataclass
class PreparedModel:
    built: BuiltModel
    plan: FreezePlan
    geometry: ImageGeometry

    @property
    def model(self) -> nn.Module:
        return self.built.model


def prepare_model(ctx: RunContext, num_classes: int, model_cfg: Optional[DictConfig] = None,
                  freeze_cfg: Optional[DictConfig] = None) -> PreparedModel:
    """Build the configured model with its head, pick the input geometry, apply the freeze plan."""
    model_cfg = model_cfg or ctx.cfg.model
    freeze_cfg = freeze_cfg or ctx.cfg.freeze
    built = build_model(model_id(model_cfg.name, model_cfg.library), num_classes, model_cfg.weights,
                        model_cfg.weights_path, model_cfg.get("num_layers"), model_cfg.get("pooling", "auto"))
    geometry = input_of(built, ctx.cfg.data)
    # The lower backbone lr protects pretrained features; a random-init backbone has none to protect.
    pretrained = built.weights_source != "random init"
    plan = make_plan(built.model, built.head_name, freeze_cfg.strategy, getattr(geometry, "crop_size", 0),
                     trainable_stages=freeze_cfg.trainable_stages, lr_decay=freeze_cfg.lr_decay,
                     train_frozen_bn=freeze_cfg.train_frozen_bn,
                     backbone_lr_mult=freeze_cfg.backbone_lr_mult if pretrained else 1.0,
                     head_warmup_epochs=freeze_cfg.head_warmup_epochs)
    ctx.placement.model(built.model)
    if ctx.cfg.device.compile:
        built.model.compile()  # in place: state_dict keys, hooks and checkpoints stay those of the model
    log.info("Freeze %s: %d stages, %d frozen; %s of %s parameters train", freeze_cfg.strategy,
             len(plan.stages), len(plan.frozen_stages),
             f"{count_params(p for p in built.model.parameters() if p.requires_grad):,}",
             f"{count_params(built.model.parameters()):,}")
    return PreparedModel(built, plan, geometry)


def input_of(built: BuiltModel, data_cfg: DictConfig) -> "ImageGeometry | TextInput":
    """What the model reads: a text model's tokenizer and data.max_length, else the image geometry."""
    tokenizer = getattr(built, "tokenizer", None)
    if tokenizer is not None:
        max_length, limit = int(data_cfg.max_length), text_length_limit(built.model, tokenizer)
        if limit is not None and max_length > limit:
            raise ConfigError(f"data.max_length={max_length} but this model reads at most {limit} tokens (its "
                              f"position embeddings); use data.max_length={limit} or less")
        return TextInput(max_length, tokenizer, built.tokenizer_files)  # type: ignore[attr-defined]
    return ImageGeometry.resolve(built.preprocess, data_cfg)


def text_length_limit(model: nn.Module, tokenizer: Any) -> Optional[int]:
    """The longest input a text model takes: the smaller of its config's max_position_embeddings and its
    tokenizer's model_max_length (which knows RoBERTa's position offset; unset, it is a huge sentinel)."""
    positions = getattr(getattr(getattr(model, "hf", None), "config", None), "max_position_embeddings", None)
    declared = getattr(tokenizer, "model_max_length", None)
    limits = [int(v) for v in (positions, declared) if isinstance(v, int) and 0 < v < 1_000_000]
    return min(limits) if limits else None


def make_optimizer(train_cfg: DictConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    if not param_groups:
        raise ConfigError("no parameter is left to train; choose another freeze strategy")
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=train_cfg.lr, momentum=train_cfg.momentum,
                               weight_decay=train_cfg.weight_decay, nesterov=train_cfg.momentum > 0)
    optimizer_class = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(param_groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader


def make_loaders(ctx: RunContext, data: RunData, geometry: "ImageGeometry | TextInput") -> Loaders:
    cfg = ctx.cfg
    if isinstance(geometry, TextInput):
        return text_loaders(ctx, data, geometry)
    augment = cfg.data.augment
    train_tf, eval_tf = build_transform(geometry, augment, train=True), build_transform(geometry, None, train=False)
    workers, pin = cfg.device.num_workers, pin_memory(cfg, ctx.device)
    splits = {split: in_memory(data.splits[split], geometry, cfg.data.in_memory_max_mb, workers, split)
              for split in ("train", "val", "test")}
    return Loaders(
        train=make_loader(ImageDataset(splits["train"], train_tf), cfg.train.batch_size, True, cfg.seed,
                          workers, batch_mixer(augment, len(data.classes)), pin),
        val=make_loader(ImageDataset(splits["val"], eval_tf), cfg.train.eval_batch_size, False, cfg.seed,
                        workers, pin_memory=pin),
        test=make_loader(ImageDataset(splits["test"], eval_tf), cfg.train.eval_batch_size, False,
                         cfg.seed, workers, pin_memory=pin),
    )


def text_loaders(ctx: RunContext, data: RunData, text_input: TextInput) -> Loaders:
    """Token-id loaders: each split tokenised once (cached), batches padded to their longest text."""
    from tlrun.cache import cache_root
    from tlrun.data.text import TextDataset, text_dataset

    cfg = ctx.cfg
    workers, pin = cfg.device.num_workers, pin_memory(cfg, ctx.device)
    sets = {split: text_dataset(data.splits[split], text_input.tokenizer, text_input.max_length, cache_root(cfg))
            for split in ("train", "val", "test")}
    return Loaders(
        train=make_loader(sets["train"], cfg.train.batch_size, True, cfg.seed, workers, TextDataset.collate, pin),
        val=make_loader(sets["val"], cfg.train.eval_batch_size, False, cfg.seed, workers, TextDataset.collate, pin),
        test=make_loader(sets["test"], cfg.train.eval_batch_size, False, cfg.seed, workers, TextDataset.collate, pin))


def pin_memory(cfg: DictConfig, device: torch.device) -> bool:
    return device.type == "cuda" if cfg.device.pin_memory is None else bool(cfg.device.pin_memory)


def device_settings(ctx: RunContext, fit: Optional[FitResult] = None) -> dict:
    """What the run actually ran on, for metrics.json."""
    cfg = ctx.cfg.device
    return {"sync_batchnorm": cfg.sync_batchnorm, "ranks_in_sync": fit.ranks_in_sync if fit is not None else None,
            "type": str(ctx.device), "amp": cfg.amp, "compile": cfg.compile, "channels_last": cfg.channels_last,
            "threads": torch.get_num_threads(), "num_workers": cfg.num_workers, "pin_memory": pin_memory(ctx.cfg, ctx.device),
            "deterministic": cfg.deterministic, "world_size": distributed.world_size(),
            "cuda_device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None}


def engine_options(cfg: DictConfig) -> dict:
    """The Engine keyword arguments that come straight from train.*."""
    from tlrun.runner import select_pipeline

    train = cfg.train
    return dict(pipeline=select_pipeline(cfg), epochs=train.epochs, scheduler=train.scheduler, warmup_epochs=train.warmup_epochs,
                step_size=train.step_size, gamma=train.gamma, grad_clip=train.grad_clip,
                patience=train.early_stopping.patience, min_delta=train.early_stopping.min_delta,
                progress=train.progress, resume=Path(train.resume) if train.resume else None,
                sync_batchnorm=cfg.device.sync_batchnorm)


def save_model_file(ctx: RunContext, prepared: PreparedModel, data: RunData, path: Optional[Path] = None) -> Path:
    """ft_model.pt: final weights plus all that is needed to rebuild the model and its preprocessing."""
    path = path or ctx.run_dir / "ft_model.pt"
    save_atomic({
        "format": MODEL_FILE_FORMAT,
        "model_name": model_id(ctx.cfg.model.name, ctx.cfg.model.library),
        "num_classes": len(data.classes),
        "classes": list(data.classes),
        "head": prepared.built.head_name,
        "preprocess": prepared.geometry.to_dict() if isinstance(prepared.geometry, TextInput)
        else asdict(prepared.geometry),
        **({"text": text_record(prepared.model, prepared.geometry)} if isinstance(prepared.geometry, TextInput) else {}),
        "weights": prepared.built.weights,
        "state_dict": prepared.model.state_dict(),
        "config": OmegaConf.to_container(ctx.cfg, resolve=True),
        "tlrun_version": tlrun.__version__,
    }, path)
    return path


def base_metrics(ctx: RunContext, pipeline: str, prepared: PreparedModel, data: RunData, fit: FitResult,
                 test: EvalResult) -> dict:
    model = prepared.model
    return {
        "pipeline": pipeline,
        "best_epoch": fit.best_epoch,
        "best_val_acc": fit.best_val_acc,
        "last_val_acc": fit.last_val_acc,
        "test_acc": test.acc,
        "test_loss": test.loss,
        "selection": "best val_acc checkpoint",
        "params_total": count_params(model.parameters()),
        "params_trainable": count_params(p for p in model.parameters() if p.requires_grad),
        "wall_time_s": round(time.perf_counter() - ctx.started, 2),
        "device": str(ctx.device),
        "device_settings": device_settings(ctx, fit),
        "model": model_id(ctx.cfg.model.name, ctx.cfg.model.library),
        "weights": prepared.built.weights,
        "weights_source": prepared.built.weights_source,
        "freeze": ctx.cfg.freeze.strategy,
        "freeze_stages": len(prepared.plan.stages),
        "frozen_stages": len(prepared.plan.frozen_stages),
        "backbone_lr_mult": prepared.plan.backbone_lr_mult,
        "head_warmup_epochs": prepared.plan.head_warmup_epochs,
        "data": data.name,
        "num_classes": len(data.classes),
        "train_size": len(data.splits["train"]),
        "val_size": len(data.splits["val"]),
        "test_size": len(data.splits["test"]),
        **({"max_length": prepared.geometry.max_length} if isinstance(prepared.geometry, TextInput)
           else {"image_size": prepared.geometry.crop_size}),
        "epochs_run": fit.epochs_run,
        "stopped_early": fit.stopped_early,
        "seed": ctx.cfg.seed,
        "versions": {"tlrun": tlrun.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def write_run_artifacts(ctx: RunContext, metrics: dict, test: EvalResult, classes: list[str], *,
                        history: Optional[pd.DataFrame] = None, data: Optional[RunData] = None,
                        curves_title: Optional[str] = None, confusion_title: Optional[str] = None,
                        summary_keys: Optional[list[str]] = None) -> None:
    """Everything a finished run leaves besides checkpoints, for every pipeline: split.csv and
    classification_report.txt (for a run with ``data``'s labelled splits), curves.png (with a history) and
    confusion_matrix.png of ``test`` (unless train.plots=false), metrics.json (wall time up to now) and the
    summary table."""
    run_dir = ctx.run_dir
    if data is not None:
        data.split_table().to_csv(run_dir / "split.csv", index=False)
        write_classification_report(test.targets, test.predictions, classes, run_dir / "classification_report.txt")
    if history is not None and ctx.cfg.train.plots:
        plot_curves(history, run_dir / "curves.png",
                    title=curves_title or f"{metrics['model']} on {data.name if data else metrics.get('data')}")
    if ctx.cfg.train.plots:
        plot_confusion(test.targets, test.predictions, classes, run_dir / "confusion_matrix.png",
                       title=confusion_title or f"test confusion matrix (acc {test.acc:.4f})")
    metrics["wall_time_s"] = round(time.perf_counter() - ctx.started, 2)
    write_json(metrics, run_dir / "metrics.json")
    ctx.tracker.log_run(metrics, run_dir)
    print_summary(metrics, run_dir, **({"keys": summary_keys} if summary_keys else {}))


def make_engine(ctx: RunContext, prepared: PreparedModel, step: TrainStep, train_loader: Iterable,
                val_loader: Optional[torch.utils.data.DataLoader], extra_groups: Iterable[dict] = (),
                **options: Any) -> Engine:
    """The run's one Engine: the freeze plan's parameter groups (plus a method's own), the configured
    optimizer and schedule, checkpoints in the run folder, train.* and device options."""
    groups = prepared.plan.param_groups(prepared.model, ctx.cfg.train.lr) + list(extra_groups)
    return Engine(model=prepared.model, step=step, optimizer=make_optimizer(ctx.cfg.train, groups),
                  train_loader=train_loader, val_loader=val_loader, placement=ctx.placement, run_dir=ctx.run_dir,
                  freeze_plan=prepared.plan, on_epoch_end=ctx.tracker.log_epoch, **engine_options(ctx.cfg),
                  **options)
