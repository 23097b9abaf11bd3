"""The one training engine every pipeline runs: epochs, evaluation, early stopping, checkpoints,
history and progress. Pipelines differ only in the ``TrainStep`` they plug in (and optional
per-epoch extra metrics)."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlrun.checkpoint import (capture_rng, capture_stream_rng, load_file, remove_stale_temp_files, restore_rng,
                              restore_stream_rng, save_atomic)
from tlrun.errors import CheckpointError, RunInterrupted
from tlrun.freeze import FreezePlan
from tlrun import distributed
from tlrun.interrupts import INTERRUPTS
from tlrun.paths import atomic_path

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    loss: torch.Tensor  # what is back-propagated
    logits: torch.Tensor  # source/class logits of the labelled batch, for train accuracy
    targets: torch.Tensor  # hard labels of that batch
    logs: dict[str, float] = field(default_factory=dict)  # extra scalars averaged per epoch


class TrainStep(nn.Module):
    """One optimisation step's forward pass as a module. The model and whatever trains beside it (a
    method's discriminator) are its submodules, so under torchrun the engine wraps the whole step in
    DistributedDataParallel and every parameter that trains is synchronised by it."""

    def forward(self, batch: Any, progress: float) -> StepOutput:
        """The loss of one batch; ``progress`` runs from 0 to 1 over training."""
        raise NotImplementedError


@dataclass
class EvalResult:
    loss: float
    acc: float
    targets: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray


@dataclass
class FitResult:
    best_epoch: int
    best_val_acc: float
    last_val_acc: float
    epochs_run: int
    stopped_early: bool
    history: pd.DataFrame
    ranks_in_sync: Optional[bool] = None  # torchrun: all ranks ended with identical weights (None: one process)


@dataclass(frozen=True)
class Placement:
    """Where batches go: the device, and whether images use the channels-last memory layout
    (NHWC: about 2x faster convolutions on CPU with oneDNN, and the tensor-core layout on GPU)."""

    device: torch.device
    channels_last: bool = False
    amp: str = "off"  # off | bf16 | fp16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.to(self.device, non_blocking=True)

    def model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model


def plain(row: dict) -> dict:
    """A dict of Python numbers (NumPy scalars converted): what the safe unpickler reads back."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in row.items()}


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices from labels that may be MixUp/CutMix probabilities."""
    return targets.argmax(dim=1) if targets.dim() == 2 else targets


class ClassificationStep(TrainStep):
    """Cross-entropy on labelled batches: the fine-tuning step."""

    def __init__(self, model: nn.Module, placement: Placement, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.placement = placement
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, batch: Any, progress: float) -> StepOutput:
        images, targets = batch
        images, targets = self.placement.images(images), self.placement.labels(targets)
        logits = self.model(images)
        return StepOutput(self.criterion(logits, targets), logits, hard_labels(targets))


def lr_multiplier(kind: str, total_steps: int, steps_per_epoch: int, warmup_steps: int,
                  step_size_epochs: int = 10, gamma: float = 0.1) -> Callable[[int], float]:
    """Per-iteration learning-rate factor for LambdaLR (applies to every parameter group)."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if kind == "onecycle":
            peak = max(1, warmup_steps or int(0.3 * total_steps))
            if step < peak:
                return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * step / peak))
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - peak) / max(1, total_steps - peak))))
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "cosine":
            done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        if kind == "step":
            return gamma ** (step // max(1, step_size_epochs * steps_per_epoch))
        if kind == "anneal":  # Ganin et al. 2016: mu_p = mu_0 / (1 + 10 p)^0.75; stays at mu_0 / 6 at the end
            done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return (1 + 10 * min(1.0, done)) ** -0.75
        return 1.0

    return factor


class Progress:
    """A rich progress bar on a terminal, one plain line per epoch elsewhere (logs, CI, SLURM)."""

    def __init__(self, mode: str, total_epochs: int, steps_per_epoch: int) -> None:
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.bar = None
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]epoch {task.fields[epoch]}/" + str(total_epochs)),
                                    BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                    TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps_per_epoch, epoch=1, status="")

    def start_epoch(self, epoch: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.task, epoch=epoch, status="")

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, status=f"loss {loss:.4f}")

    def end_epoch(self, row: dict) -> None:
        if self.mode == "none":
            return
        extras = "  ".join(f"{k} {v:.4f}" for k, v in row.items()
                           if k not in ("epoch", "lr", "epoch_time_s") and isinstance(v, float) and not math.isnan(v))
        message = f"epoch {row['epoch']}: {extras}  ({row['epoch_time_s']:.1f}s)"
        if self.bar is not None:
            self.bar.console.print(message)
        else:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Engine:
    """Trains ``model`` with ``step`` and keeps the run folder's history and checkpoints."""

    def __init__(self, *, model: nn.Module, step: TrainStep, optimizer: torch.optim.Optimizer,
                 train_loader: Iterable, val_loader: Optional[DataLoader], placement: Placement, run_dir: Path,
                 epochs: int, steps_per_epoch: Optional[int] = None, scheduler: str = "cosine",
                 warmup_epochs: float = 0.0, step_size: int = 10, gamma: float = 0.1,
                 grad_clip: Optional[float] = None, patience: Optional[int] = None, min_delta: float = 0.0,
                 freeze_plan: Optional[FreezePlan] = None, progress: str = "auto",
                 epoch_metrics: Optional[Callable[[dict], dict[str, float]]] = None,
                 auxiliary: Optional[nn.Module] = None, validate: Optional[Callable[[], EvalResult]] = None,
                 resume: Optional[Path] = None, pipeline: str = "", sync_batchnorm: bool = False,
                 on_epoch_end: Optional[Callable[[dict], None]] = None,
                 select_by: tuple[str, str] = ("val_acc", "max")) -> None:
        self.model, self.step, self.optimizer = model, step, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.placement, self.run_dir, self.epochs = placement, Path(run_dir), epochs
        self.steps_per_epoch = steps_per_epoch or len(train_loader)  # type: ignore[arg-type]
        self.schedule = (scheduler, warmup_epochs, step_size, gamma)
        self.first_lrs = [group["lr"] for group in optimizer.param_groups]
        self.scheduler = self._make_scheduler()
        self.grad_clip, self.patience, self.min_delta = grad_clip, patience, min_delta
        self.freeze_plan = freeze_plan
        self.head_only = False  # LP-FT: the freeze plan's head-only warm-up is in force
        self.progress_mode = progress
        self.epoch_metrics = epoch_metrics
        self.on_epoch_end = on_epoch_end  # e.g. an experiment tracker's log_epoch, after the row is on disk
        # The history column (and max/min) that picks best.pt and drives early stopping; "epoch"/max = the last.
        self.select_by = select_by
        # Modules trained beside the model (e.g. DANN's domain discriminator): train mode and checkpoints.
        self.auxiliary = auxiliary
        # Under torchrun the step runs through DistributedDataParallel (built at the first fit).
        self.sync_batchnorm = sync_batchnorm
        self.parallel_step: Optional[nn.Module] = None
        self.ranks_in_sync: Optional[bool] = None  # torchrun: every rank ended with identical weights
        self.pipeline = pipeline  # recorded in checkpoints: a resume by another method is refused
        # Per-epoch validation; pipelines whose evaluation is not one forward pass (few-shot episodes
        # adapt the model first) pass their own, else val_loader is evaluated.
        self.validate = validate or (lambda: self.evaluate(self.val_loader))
        self.history: list[dict] = []
        self.columns: dict[str, Any] = {}  # constant per phase, added to each history row (e.g. image_size)
        self.epoch_offset = 0  # epochs run by earlier phases
        self.checkpoint_dir = self.run_dir / "checkpoints"
        # The interrupted run folder to continue from (its checkpoints/last.pt); torchrun's other ranks
        # write into scratch folders but read the real one.
        self.resume = Path(resume) if resume else None
        # fp16 needs loss scaling against gradient underflow; bf16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.amp == "fp16")
        self.timings: dict[str, float] = {}
        self.eval_forward_s = 0.0  # model forward time of evaluate() calls since it was last reset

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        kind, warmup_epochs, step_size, gamma = self.schedule
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(
            kind, self.steps_per_epoch * self.epochs, self.steps_per_epoch,
            int(warmup_epochs * self.steps_per_epoch), step_size, gamma))

    def start_phase(self, train_loader: Iterable, val_loader: Optional[DataLoader], epochs: int,
                    lr_scale: float = 1.0, columns: Optional[dict[str, Any]] = None) -> None:
        """Continue training in a new phase (progressive resizing): new loaders and epochs, the learning
        rates scaled from the initial ones with a fresh schedule; the optimizer state (momentum, Adam
        moments), history and epoch numbering carry on. The next ``fit`` selects its best epoch anew."""
        self.epoch_offset = len(self.history)
        self.train_loader, self.val_loader, self.epochs = train_loader, val_loader, epochs
        self.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        for group, lr in zip(self.optimizer.param_groups, self.first_lrs):
            group["lr"] = group["initial_lr"] = lr * lr_scale  # LambdaLR keeps an existing initial_lr
        self.scheduler = self._make_scheduler()
        self.columns = dict(columns or {})

    # -- evaluation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, loader: DataLoader) -> EvalResult:
        self.model.eval()
        losses, targets, probabilities = [], [], []
        for images, labels in loader:
            started = time.perf_counter()
            with self.placement.autocast():
                logits = self.model(self.placement.images(images)).float()
            self.eval_forward_s += time.perf_counter() - started
            labels = self.placement.labels(labels)
            losses.append(nn.functional.cross_entropy(logits, labels, reduction="sum").item())
            targets.append(labels.cpu())
            probabilities.append(logits.softmax(dim=1).cpu())
        y = torch.cat(targets).numpy()
        p = torch.cat(probabilities).numpy()
        predictions = p.argmax(axis=1)
        return EvalResult(sum(losses) / max(1, len(y)), float((predictions == y).mean()) if len(y) else float("nan"),
                          y, predictions, p)

    # -- training ------------------------------------------------------------------------------
    def _set_train_mode(self, epoch: int) -> None:
        if self.freeze_plan is not None:
            head_only = self.freeze_plan.head_only(epoch)
            if head_only != self.head_only:  # LP-FT: the head's warm-up starts or ends
                self.freeze_plan.apply(self.model, head_only=head_only)
                self.head_only = head_only
                if distributed.world_size() > 1:  # DDP registers the trainable parameters when it wraps
                    self.parallel_step = distributed.data_parallel(self.step, self.placement.device,
                                                                   self.sync_batchnorm)
            self.freeze_plan.set_train_mode(self.model, head_only=head_only)
        else:
            self.model.train()
        if self.auxiliary is not None:
            self.auxiliary.train()

    def _train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]:
        self._set_train_mode(epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        extra_sums: dict[str, float] = {}
        # The network's gradient norm is clipped apart from a method's own layers' (a discriminator): what they
        # learn does not scale the network's step (in a source warm-up that step stays source-only's).
        own = {id(p) for p in self.auxiliary.parameters()} if self.auxiliary is not None else set()
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip_groups = [group for group in ([p for p in trainable if id(p) not in own],
                                           [p for p in trainable if id(p) in own]) if group]
        for loader in (self.train_loader, getattr(self.train_loader, "source", None),
                       getattr(self.train_loader, "target", None)):
            if hasattr(getattr(loader, "sampler", None), "set_epoch"):  # torchrun: a new shard order per epoch
                loader.sampler.set_epoch(epoch)
        # Where the epoch's time goes (wall clock; on CUDA kernels run asynchronously, so there the split is
        # approximate): waiting for batches, and forward + backward + optimizer step.
        data_time = compute_time = 0.0
        tick = time.perf_counter()
        iterator = iter(self.train_loader)
        for index in range(self.steps_per_epoch):
            batch = next(iterator)
            fetched = time.perf_counter()
            data_time += fetched - tick
            done = ((epoch - 1 - self.epoch_offset) * self.steps_per_epoch + index) / (self.epochs * self.steps_per_epoch)
            with self.placement.autocast():
                out = self.parallel_step(batch, done)
            if not torch.isfinite(out.loss):
                kept = f"checkpoints/last.pt keeps epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written yet"
                raise FloatingPointError(f"loss became {out.loss.item()} at epoch {epoch}, step {index + 1} ({kept})")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()  # DDP averages the gradients over ranks here
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                for group in clip_groups:
                    nn.utils.clip_grad_norm_(group, self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            tick = time.perf_counter()
            compute_time += tick - fetched
            n = len(out.targets)
            loss_sum += out.loss.item() * n
            correct += (out.logits.argmax(dim=1) == out.targets).sum().item()
            seen += n
            for key, value in out.logs.items():
                extra_sums[key] = extra_sums.get(key, 0.0) + float(value) * n
            progress.step(out.loss.item())
            if self._interrupted():
                raise RunInterrupted(INTERRUPTS.received or "a signal to another rank", epoch - 1)
        keys = sorted(extra_sums)
        loss_sum, correct, seen, *extras = distributed.sum_over_ranks(loss_sum, correct, seen,
                                                                      *(extra_sums[k] for k in keys))
        metrics = {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen)}
        metrics.update({k: v / max(1, seen) for k, v in zip(keys, extras)})
        self.timings = {"data_time_s": data_time, "compute_time_s": compute_time}
        return metrics

    def _interrupted(self) -> bool:
        """Under torchrun every rank must stop at the same step, whichever rank got the signal."""
        if distributed.world_size() == 1:
            return INTERRUPTS.received is not None
        return distributed.sum_over_ranks(1.0 if INTERRUPTS.received else 0.0)[0] > 0

    def _checkpoint_state(self, epoch: int, best: dict) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": capture_rng(), "best": plain(best),
                "history": [plain(row) for row in self.history],
                "auxiliary": self.auxiliary.state_dict() if self.auxiliary is not None else None,
                "scaler": self.scaler.state_dict(), "stream_rng": capture_stream_rng(self.train_loader),
                "pipeline": self.pipeline}

    def _restore(self) -> tuple[int, dict]:
        """Continue from checkpoints/last.pt: weights, optimizer, schedule, history, early-stopping
        state and every RNG, so the rest of the run is what it would have been without the stop."""
        path = self.resume / "checkpoints" / "last.pt"
        state = load_file(path, "a tlrun checkpoint", self.placement.device)
        if self.pipeline and state.get("pipeline", self.pipeline) != self.pipeline:
            raise CheckpointError(f"{path} was written by the {state['pipeline']} pipeline, not {self.pipeline}; "
                                  "resume with the overrides of that run")
        try:
            self.model.load_state_dict(state["model"])
            if self.auxiliary is not None:
                self.auxiliary.load_state_dict(state["auxiliary"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} was written by another model, class count or method "
                                  f"({str(exc).splitlines()[0][:160]}); resume with the overrides of that run") from exc
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state.get("scaler") or {})
        self.history = list(state["history"])
        restore_rng(state["rng"])
        restore_stream_rng(self.train_loader, state.get("stream_rng", []))
        log.info("Resuming after epoch %d of %d from %s", state["epoch"], self.epochs, path)
        return state["epoch"] + 1, dict(state["best"])

    def fit(self) -> FitResult:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.checkpoint_dir)  # a writer killed mid-checkpoint left its temp file
        best = {"epoch": 0, "val_acc": -1.0, "val_loss": float("inf"), "stale": 0, "score": None}
        offset = self.epoch_offset  # epochs of earlier progressive-resizing phases
        first_epoch = offset + 1
        if self.parallel_step is None:  # DDP starts every rank from rank 0's weights and buffers
            self.parallel_step = distributed.data_parallel(self.step, self.placement.device, self.sync_batchnorm)
        if self.resume and (self.resume / "checkpoints" / "last.pt").is_file():
            first_epoch, best = self._restore()
        elif self.resume:  # interrupted before its first checkpoint: the same seed makes a restart exact
            log.info("No epoch of %s was saved before it stopped: training starts from epoch 1", self.resume)
        progress = Progress(self.progress_mode if distributed.is_main() else "none", offset + self.epochs,
                            self.steps_per_epoch)
        # A resumed run that had stopped early (then was interrupted in its test) trains no further.
        stopped_early = bool(best.get("stopped_early"))
        epochs = range(0) if stopped_early else range(first_epoch, offset + self.epochs + 1)
        with INTERRUPTS.deferred():
            try:
                for epoch in epochs:
                    if self._fit_epoch(epoch, best, progress):
                        log.info("Early stopping: val_acc has not improved for %d epochs", self.patience)
                        stopped_early = True
                        break
            finally:
                progress.close()
        distributed.broadcast_buffers(self.step)
        self.ranks_in_sync = distributed.ranks_in_sync(self.step)
        return FitResult(best["epoch"], best["val_acc"], self.history[-1]["val_acc"], len(self.history),
                         stopped_early, pd.DataFrame(self.history), self.ranks_in_sync)

    def _fit_epoch(self, epoch: int, best: dict, progress: Progress) -> bool:
        """Train and validate one epoch, record it and checkpoint it; True when early stopping says stop."""
        progress.start_epoch(epoch)
        started = time.perf_counter()
        train_metrics = self._train_epoch(epoch, progress)
        lr = self.optimizer.param_groups[-1]["lr"]
        self.eval_forward_s = 0.0
        val = self.validate()
        row = {"epoch": epoch, **{k: train_metrics.pop(k) for k in ("train_loss", "train_acc")},
               "val_loss": val.loss, "val_acc": val.acc, "lr": lr, **self.columns}
        row.update(train_metrics)
        if self.epoch_metrics is not None:  # pipeline columns computed from the epoch's row
            row.update(self.epoch_metrics(row))
        row["epoch_time_s"] = time.perf_counter() - started
        # Model time: training forward/backward/optimizer steps plus the validation forward passes;
        # the rest of epoch_time_s (batches, metrics, checkpoints) is the loop's overhead.
        row["data_time_s"] = self.timings["data_time_s"]
        row["compute_time_s"] = self.timings["compute_time_s"] + self.eval_forward_s
        self.history.append(row)
        improved = self._improves(row, best)
        if improved:
            best.update(epoch=epoch, val_acc=val.acc, val_loss=val.loss, stale=0, score=float(row[self.select_by[0]]))
        else:
            best["stale"] += 1
        stop = self.patience is not None and best["stale"] >= self.patience
        best["stopped_early"] = stop
        state = self._checkpoint_state(epoch, best)
        # best.pt before last.pt, and the history last: a write that fails (disk full) leaves last.pt at an
        # epoch whose best.pt exists, so the resume that follows can always finish.
        if improved:
            save_atomic(state, self.checkpoint_dir / "best.pt")
        save_atomic(state, self.checkpoint_dir / "last.pt")
        self.write_history()
        if self.on_epoch_end is not None:
            self.on_epoch_end(plain(row))
        progress.end_epoch(row)
        if self._interrupted():  # arrived during validation/checkpointing: this epoch is saved
            raise RunInterrupted(INTERRUPTS.received or "a signal to another rank", epoch)
        return stop

    def _improves(self, row: dict, best: dict) -> bool:
        """Does this epoch beat the best one by the selection column (by more than min_delta)?"""
        column, mode = self.select_by
        score = float(row[column])
        previous = best.get("score", best["val_acc"] if column == "val_acc" else None)  # older checkpoints
        if previous is None or best["epoch"] == 0:
            return True if column != "val_acc" else score > best["val_acc"] + self.min_delta
        return score > previous + self.min_delta if mode == "max" else score < previous - self.min_delta

    def write_history(self) -> None:
        path = self.run_dir / "ft_history.csv"
        with atomic_path(path) as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)

    def load_best(self) -> None:
        """Restore the weights of the best validation epoch."""
        state = load_file(self.checkpoint_dir / "best.pt", "a tlrun checkpoint", self.placement.device)
        self.model.load_state_dict(state["model"])
