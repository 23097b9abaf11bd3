"""What a domain-adaptation method contributes to a training step of the adaptation pipeline.

A method subclasses :class:`Alignment` (an ``nn.Module``: its own layers, e.g. DANN's discriminator,
train beside the model in their own parameter group, are checkpointed and wrapped by DDP with it),
and registers itself: ``@ADAPTATION.register("coral", CoralConfig)``. Each step hands it the source
and the target half of one joint forward pass, features **and** logits, and the training progress
p in [0, 1]; it returns its loss (already weighted) and per-step diagnostics, which become
``ft_history.csv`` columns (epoch means). After training it may add ``metrics.json`` entries and
warn about the run it saw.

**Warm-up.** The domain loss starts only after ``warmup_epochs`` source-only epochs *and* an epoch whose
source train accuracy covered ``warmup_source_acc`` of the way from chance to 1: aligned from the first
step, a network that has not yet left its initial plateau reaches the trivial aligned solution (constant
features: zero MMD, a discriminator at 0.5, chance accuracy on both domains). The trade-off schedule then
runs over the remaining progress, p' = (p − p₀) / (1 − p₀). The start p₀ is a buffer, so it is
checkpointed with the method and a resumed run continues the same schedule. By default
(``warmup_batch_norm=source``) the network's warm-up steps are source-only steps, so the warm-up ends at the
source-only run's pace; a method with layers of its own (a discriminator) trains them meanwhile on features of
the joint batch from a forward pass that leaves the network untouched, so that it is not the noisy early
discriminator when the features start to follow. With ``joint`` the target batch passes through the network
during the warm-up (BatchNorm over both domains).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# A collapse: source train accuracy within this fraction of the way from chance to 1, and features whose
# spread fell below this fraction of their spread when alignment started.
COLLAPSE_ACC = 0.1
COLLAPSE_FEATURE_STD = 0.1


def above_chance(accuracy: float, num_classes: int) -> float:
    """How far ``accuracy`` is from chance (0) towards perfect (1)."""
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


def dann_lambda(progress: float, max_weight: float = 1.0, gamma: float = 10.0) -> float:
    """lambda_p = max_weight * (2 / (1 + exp(-gamma * p)) - 1) (Ganin et al. 2016, Sec. 5.2.2).

    Starts at 0 so that the noisy early discriminator does not disturb the features, and approaches
    ``max_weight`` as p -> 1 (p = 1 gives max_weight * tanh(gamma / 2), 0.99991 * max_weight for gamma = 10).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return max_weight * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def prediction_entropy(predictions: torch.Tensor) -> torch.Tensor:
    """H(ŷ) = −Σ_c ŷ_c log ŷ_c of each row of (N, C) probabilities, with 0 log 0 = 0 (CDAN+E's and MCC's
    sample weights 1 + exp(−H))."""
    return -torch.special.xlogy(predictions, predictions).sum(dim=1)


def last_logged(history: pd.DataFrame, column: str) -> Optional[float]:
    """A method's column in the last epoch, None when the domain loss never started (warm-up epochs log only
    the loss, lambda and feature_std)."""
    if column not in history or history.empty or history[column].isna().iloc[-1]:
        return None
    return float(history[column].iloc[-1])


@dataclass
class DomainBatch:
    """One domain's half of a step's joint forward pass."""

    features: torch.Tensor  # (N, D): what adaptation.features / feature_layer select (pooled features or logits)
    logits: torch.Tensor  # (N, C): the classifier's output


class Alignment(nn.Module):
    """Base of a domain-adaptation method. ``cfg`` is its config node (``adaptation.*``)."""

    loss_name = "domain_loss"  # the ft_history.csv column of the method's loss
    lr_mult = 1.0  # learning rate of the method's own parameters = train.lr x this

    def __init__(self, cfg: Any, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        no_warmup = int(cfg.get("warmup_epochs", 0)) == 0 and float(cfg.get("warmup_source_acc", 0.0)) == 0.0
        # Progress p0 at which the domain loss starts (-1: still warming up).
        self.register_buffer("start_progress", torch.tensor(0.0 if no_warmup else -1.0))
        # The method's own random stream (its dropout), kept apart from the run's (see random_stream).
        self.stream_seed = 0
        self.cpu_rng_state = torch.get_rng_state()
        self.device_rng_state: Optional[torch.Tensor] = None  # the accelerator's (cuda, mps), from its first step

    def start_random_stream(self, seed: int) -> None:
        """Start the method's own stream from the global RNG's current state (build_method seeds it)."""
        self.stream_seed, self.cpu_rng_state, self.device_rng_state = seed, torch.get_rng_state(), None

    @contextlib.contextmanager
    def random_stream(self, device: torch.device) -> Iterator[None]:
        """Run the block (the method's forward) on the method's own random stream and give the run its stream
        back: what the method draws (e.g. the discriminator's dropout masks) does not shift the model's dropout
        or the augmentation, so every method sees the run's random numbers that source-only sees."""
        accelerator = device.type if device.type in ("cuda", "mps") else None
        module = torch.get_device_module(accelerator) if accelerator else None
        index = (device.index if device.index is not None else module.current_device()) if module else None
        with torch.random.fork_rng(devices=[index] if module else [], device_type=accelerator):
            torch.set_rng_state(self.cpu_rng_state)
            if module is not None and self.device_rng_state is None:
                module.manual_seed(self.stream_seed)  # the current device: the runner has set it to this one
            elif module is not None:
                module.set_rng_state(self.device_rng_state, index)
            yield
            self.cpu_rng_state = torch.get_rng_state()
            if module is not None:
                self.device_rng_state = module.get_rng_state(index)

    def get_extra_state(self) -> dict[str, Any]:
        """The stream's state goes into the checkpoint with the method's weights: a resumed run continues it."""
        return {"cpu_rng_state": self.cpu_rng_state, "device_rng_state": self.device_rng_state,
                "stream_seed": self.stream_seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # On the CPU whatever map_location the checkpoint was loaded with: RNG states are CPU byte tensors.
        self.cpu_rng_state = state["cpu_rng_state"].cpu()
        device_state = state.get("device_rng_state")
        self.device_rng_state = device_state.cpu() if device_state is not None else None
        self.stream_seed = int(state["stream_seed"])

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        # A checkpoint written before methods had their own stream has no extra state: keep the current one.
        if "_extra_state" not in state_dict:
            state_dict = {**state_dict, "_extra_state": self.get_extra_state()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def aligned_progress(self, progress: float) -> Optional[float]:
        """Progress of the alignment schedule, p' = (p - p0) / (1 - p0); None during the warm-up."""
        start = float(self.start_progress)
        if start < 0 or progress < start:
            return None
        return 1.0 if start >= 1 else (progress - start) / (1.0 - start)

    def weight(self, progress: float) -> float:
        """The trade-off at progress p: 0 during the warm-up, then adaptation.weight, ramped by the DANN
        schedule over the aligned progress unless constant."""
        aligned = self.aligned_progress(progress)
        if aligned is None:
            return 0.0
        if self.cfg.schedule == "constant":
            return float(self.cfg.weight)
        return dann_lambda(aligned, self.cfg.weight, self.cfg.gamma)

    def end_epoch(self, row: dict, epochs: int) -> None:
        """After each epoch (its ft_history.csv row): start the domain loss once the warm-up is over."""
        threshold = float(self.cfg.warmup_source_acc)  # 0 = epochs only, even at below-chance accuracy
        if float(self.start_progress) < 0 and row["epoch"] >= int(self.cfg.warmup_epochs) \
                and (threshold == 0 or above_chance(row["train_acc"], self.num_classes) >= threshold):
            self.start_progress.fill_(row["epoch"] / epochs)
            if row["epoch"] < epochs:
                log.info("Source warm-up done after epoch %d (train acc %.3f): the domain loss starts",
                         row["epoch"], row["train_acc"])

    def forward(self, source: DomainBatch, target: DomainBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted domain loss and per-step scalars for ft_history.csv."""
        raise NotImplementedError

    def metrics(self, history: pd.DataFrame) -> dict[str, Any]:
        """Extra metrics.json entries from the finished run's history (label-free diagnostics)."""
        return {}

    def check_history(self, history: pd.DataFrame) -> None:
        """Warn (one line) about a run whose history shows the method failed: the domain loss never
        started, or the features collapsed to the trivial aligned solution."""
        if history.empty:
            return
        aligned = history[history["lambda"] > 0] if "lambda" in history else history.iloc[0:0]
        start = float(self.start_progress)
        if aligned.empty and (start < 0 or start >= 1):  # >= 1: the warm-up ended with the last epoch
            log.warning("The domain loss never started: source train accuracy reached the warm-up's threshold "
                        "(adaptation.warmup_source_acc=%g, best %.3f) %s; the run is source-only. Train longer, "
                        "raise train.lr, or lower adaptation.warmup_source_acc.", float(self.cfg.warmup_source_acc),
                        float(history["train_acc"].max()), "only in the last epoch" if start >= 1 else "in no epoch")
            return
        collapse = collapsed(history, self.num_classes)
        if collapse:
            log.warning(collapse)


def collapsed(history: pd.DataFrame, num_classes: int) -> Optional[str]:
    """The one-line diagnosis of a failed alignment, or None: source train accuracy at chance for the last
    two aligned epochs, or at chance in the last one while the features' spread (``feature_std``) has shrunk
    below COLLAPSE_FEATURE_STD of its value before alignment. A classifier at chance on its own labelled data
    has failed whatever the features did; the shrinkage is the second witness that lets one epoch suffice
    (on a small source one epoch's accuracy is noisy) and words the message (MMD's constant features;
    DANN's game can keep them spread)."""
    if "feature_std" not in history or "lambda" not in history:
        return None
    aligned = history[history["lambda"] > 0]
    if len(aligned) < 2:
        return None
    before = history.loc[: aligned.index[0], "feature_std"].max()
    last = aligned.iloc[-2:]
    at_chance = [above_chance(acc, num_classes) <= COLLAPSE_ACC for acc in last["train_acc"]]
    shrunk = float(last["feature_std"].iloc[-1]) <= COLLAPSE_FEATURE_STD * float(before)
    if not (all(at_chance) or (at_chance[-1] and shrunk)):
        return None
    cause = (f"while the features shrank to std {last['feature_std'].iloc[-1]:.2g} (from {before:.2g}): the "
             "domain loss found the trivial aligned solution of constant features" if shrunk else
             "while the domain loss was on: it kept the classifier from learning the source labels")
    return (f"Adaptation collapsed: source train accuracy {last['train_acc'].iloc[-1]:.3f} is at chance "
            f"(1/{num_classes}) {cause}. Fixes: a longer source warm-up (adaptation.warmup_epochs, "
            "adaptation.warmup_source_acc), a lower adaptation.weight, or a lower train.lr.")
