"""Unsupervised domain adaptation: labelled source, unlabelled target; the method (tlrun.methods: DANN,
MMD, ...) is a plug-in of the step, adaptation=none with a data.target the source-only baseline.

Every step draws one source and one target batch; an epoch is as long as the longer loader and the
shorter one is cycled, never zip-truncated. Target labels are used only for reporting; the model is
selected by source validation accuracy.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from tlrun.checkpoint import isolated_rng
from tlrun.data.datasets import ImageDataset
from tlrun.data.loaders import PairedBatches, make_loader
from tlrun.data.splits import load_run_data
from tlrun.data.transforms import build_transform
from tlrun.engine import Placement, StepOutput, TrainStep
from tlrun.errors import ConfigError, DataError
from tlrun.features import FeatureTap
from tlrun.methods import ADAPTATION, validators
from tlrun.methods.alignment import Alignment, DomainBatch, collapsed
from tlrun.methods.domain_gap import feature_mmd, proxy_a_distance
from tlrun.pipelines.common import (PIPELINES, RunContext, base_metrics, make_engine, make_loaders, prepare_model,
                                    save_model_file, write_run_artifacts)
from tlrun.report import plot_domain_features

log = logging.getLogger(__name__)

GAP_SAMPLES = 1000  # per domain, for the MMD / A-distance / plot of the feature space
VALIDATION_SAMPLES = 500  # per split, for the label-free validators of each epoch


def feature_tap(model: nn.Module, head_name: str, cfg: DictConfig) -> FeatureTap:
    """The tap on the features a run aligns (with features=pooled) and measures the domain gap on: the
    head's input (pooled features), or with adaptation.feature_layer that module's output."""
    if cfg.feature_layer:  # the DANN paper attaches its discriminator after the conv feature extractor
        return FeatureTap(model, cfg.feature_layer, side="output", key="adaptation.feature_layer")
    return FeatureTap(model, head_name)


class AdaptationStep(TrainStep):
    """Cross-entropy on the source batch, plus the method's domain loss between the source and target halves.

    Source and target go through the network in one concatenated batch, so BatchNorm sees both
    domains (as in DANN/DAN); the method gets each half's features and logits. Without a method
    (source-only) the target batch is unused. During the method's source warm-up the domain loss is 0
    and, with ``adaptation.warmup_batch_norm=source`` (the default), the network's step is a source-only step
    (the target kept out of BatchNorm too, so the source is learnt at source-only's pace) while the method's own
    layers, if it has any, train on the side; with ``joint`` the target batch still shares BatchNorm. With
    ``adaptation.mcc_weight`` > 0 the step also adds that weight x MCC of the target logits (tlrun.methods.mcc)
    after the warm-up.
    """

    def __init__(self, model: nn.Module, tap: FeatureTap, placement: Placement, method: Optional[Alignment],
                 align_on: str = "pooled", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model, self.method = model, method
        self.tap, self.placement, self.align_on = tap, placement, align_on
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # Here rather than in each method: the regulariser composes with any of them the same way.
        self.mcc_weight = float(method.cfg.get("mcc_weight", 0.0)) if method is not None else 0.0
        self.mcc: Optional[nn.Module] = None
        if self.mcc_weight > 0:
            from tlrun.methods.mcc import MinimumClassConfusionLoss

            self.mcc = MinimumClassConfusionLoss(float(method.cfg.mcc_temperature))
        self.source_warmup = method is not None and method.cfg.get("warmup_batch_norm", "source") == "source"
        # A method with layers of its own (DANN's, CDAN's discriminator) trains them during a source warm-up too, so
        # that they are not the "noisy early discriminator" (Ganin et al. 2016) when the features start to follow.
        self.trains_during_warmup = self.source_warmup and any(p.requires_grad for p in method.parameters())

    def source_step(self, source_images: torch.Tensor, source_labels: torch.Tensor) -> StepOutput:
        """Cross-entropy on the source batch alone: source-only training, and the method's warm-up."""
        logits = self.model(source_images)
        cls_loss = self.criterion(logits, source_labels)
        logs = {"cls_loss": cls_loss.item()}
        if self.method is not None:  # the columns the aligned epochs have, at their warm-up values
            features = self.tap.features if self.align_on == "pooled" else logits
            logs.update({self.method.loss_name: 0.0, "lambda": 0.0, "feature_std": feature_spread(features)})
            if self.mcc is not None:
                logs["mcc_loss"] = 0.0
        return StepOutput(cls_loss, logits, source_labels, logs)

    def forward(self, batch: Any, progress: float) -> StepOutput:
        (source_images, source_labels), (target_images, _unused_target_labels) = batch
        source_images = self.placement.images(source_images)
        source_labels = self.placement.labels(source_labels)
        warming_up = self.method is not None and self.method.aligned_progress(progress) is None
        if self.method is None or (warming_up and self.source_warmup):
            if self.trains_during_warmup:
                return self.warmup_step_training_the_method(source_images, source_labels,
                                                            self.placement.images(target_images), progress)
            return self.source_step(source_images, source_labels)
        target_images = self.placement.images(target_images)
        count = len(source_images)
        logits_all = self.model(torch.cat([source_images, target_images]))
        features = self.tap.features if self.align_on == "pooled" else logits_all
        logits = logits_all[:count]
        cls_loss = self.criterion(logits, source_labels)
        with self.method.random_stream(features.device):
            domain_loss, stats = self.method(DomainBatch(features[:count], logits),
                                             DomainBatch(features[count:], logits_all[count:]), progress)
        logs = {"cls_loss": cls_loss.item(), self.method.loss_name: domain_loss.item(),
                "feature_std": feature_spread(features[:count]), **stats}
        loss = cls_loss + domain_loss
        if self.mcc is not None:  # the method's warm-up holds the regulariser back too
            mcc_loss = domain_loss.new_zeros(()) if warming_up else self.mcc_weight * self.mcc(logits_all[count:])
            logs["mcc_loss"] = mcc_loss.item()
            loss = loss + mcc_loss
        return StepOutput(loss, logits, source_labels, logs)


    def warmup_step_training_the_method(self, source_images: torch.Tensor, source_labels: torch.Tensor,
                                        target_images: torch.Tensor, progress: float) -> StepOutput:
        """A source warm-up step that also trains the method's own layers. First the joint batch goes through
        the network without gradient, with its buffers (BatchNorm's running statistics) and every random stream
        put back afterwards (before the step's own forward, whose backward needs those buffers unmodified);
        then the source-only step, exactly as source-only takes it. The method's loss on the detached features
        (its weight is 0 in the warm-up: DANN's reversal passes nothing back) reaches only its own layers."""
        count = len(source_images)
        with torch.no_grad(), unchanged_network(self.model):
            logits_all = self.model(torch.cat([source_images, target_images]))
            features = self.tap.features if self.align_on == "pooled" else logits_all
        out = self.source_step(source_images, source_labels)
        with self.method.random_stream(features.device):
            domain_loss, stats = self.method(DomainBatch(features[:count], logits_all[:count]),
                                             DomainBatch(features[count:], logits_all[count:]), progress)
        logs = {**out.logs, self.method.loss_name: domain_loss.item(), **stats}
        return StepOutput(out.loss + domain_loss, out.logits, out.targets, logs)


@contextlib.contextmanager
def unchanged_network(model: nn.Module) -> Iterator[None]:
    """Run the block (a forward pass in train mode) and put back what it changed outside autograd: the
    model's buffers (BatchNorm's running statistics and counters) and the global random streams (dropout)."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        with isolated_rng():
            yield
    finally:  # also when the block raises: a caller that catches it still has the network it had
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def feature_spread(features: torch.Tensor) -> float:
    """Mean per-dimension std of a batch's source features: -> 0 when alignment collapses them."""
    with torch.no_grad():
        return features.float().std(dim=0).mean().item() if len(features) > 1 else float("nan")


def method_seed(seed: int) -> int:
    """The seed of a method's own random stream: derived from the run's seed, distinct from it."""
    return int(np.random.SeedSequence([seed, 0xDA]).generate_state(1)[0])


def build_method(cfg: DictConfig, feature_dim: int, num_classes: int, seed: int = 0) -> Optional[Alignment]:
    """The registered method that adaptation.method names, built for these features (None: source-only).

    Its layers are initialised from a stream of its own (``method_seed(seed)``), which its steps then continue
    (Alignment.random_stream): the run's stream (augmentation, the model's dropout) is the same for every
    method, so a warm-up repeats source-only's epochs and two methods differ only by what their losses do.
    """
    spec = ADAPTATION.spec(cfg.method)
    if spec.name == "none":
        return None
    if spec.build is None:
        raise ConfigError(f"adaptation method '{spec.name}' registered no Alignment to build")
    stream = method_seed(seed)
    with isolated_rng(stream):
        method = spec.build(cfg, feature_dim, num_classes)
        method.start_random_stream(stream)
    return method


def target_names(cfg) -> tuple[str, Optional[str]]:
    data = cfg.data
    if data.target is None and data.target_root is None:
        raise ConfigError(f"adaptation={cfg.adaptation.method} needs a target domain: data.target=<dataset> "
                          "(e.g. cvdigits_m) or data.target_root=<image folder>")
    name = data.target or "imagefolder"
    from tlrun.data.sources import dataset_builder

    dataset_builder(name, "data.target=")  # before any data is loaded; the message names data.target
    if name == "imagefolder" and not data.target_root:
        raise ConfigError("data.target=imagefolder needs data.target_root=<folder of class sub-folders>")
    return name, data.target_root


@torch.inference_mode()
def extract_features(model: nn.Module, tap: FeatureTap, loader: DataLoader, placement: Placement,
                     limit: int = GAP_SAMPLES) -> np.ndarray:
    model.eval()
    chunks, seen = [], 0
    for images, _ in loader:
        model(placement.images(images))
        chunks.append(tap.features.float().cpu())
        seen += len(images)
        if seen >= limit:
            break
    return torch.cat(chunks)[:limit].numpy()


@torch.inference_mode()
def extract_outputs(model: nn.Module, tap: FeatureTap, loader: DataLoader,
                    placement: Placement) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, logits, labels) of every batch of ``loader``, in eval mode, on the CPU in float32."""
    model.eval()
    features, logits, labels = [], [], []
    for images, targets in loader:
        logits.append(model(placement.images(images)).float().cpu())
        features.append(tap.features.float().cpu())
        labels.append(targets)
    return torch.cat(features), torch.cat(logits), torch.cat(labels)


def sample_loader(images, transform, batch_size: int, seed: int, workers: int) -> DataLoader:
    """At most VALIDATION_SAMPLES of ``images`` (a seeded random subset, the same every epoch), unshuffled.
    Its own generator: iterating it never draws from the global torch stream, so scoring the validators
    leaves training's random numbers (dropout, augmentation) exactly as they would be without them."""
    dataset = ImageDataset(images, transform)
    count = min(len(dataset), VALIDATION_SAMPLES)
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return DataLoader(torch.utils.data.Subset(dataset, chosen.tolist()), batch_size=batch_size, shuffle=False,
                      num_workers=workers, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


class LabelFreeValidators:
    """The epoch's label-free scores (tlrun.methods.validators): target entropy, information maximisation
    and SND from the target predictions; DEV from the source validation losses, importance-weighted by a
    domain classifier on source-train vs target features. Target labels are never read."""

    def __init__(self, model: nn.Module, tap: FeatureTap, placement: Placement, loaders: dict[str, DataLoader],
                 seed: int) -> None:
        self.model, self.tap, self.placement, self.loaders, self.seed = model, tap, placement, loaders, seed

    def __call__(self) -> dict[str, float]:
        outputs = {name: extract_outputs(self.model, self.tap, loader, self.placement)
                   for name, loader in self.loaders.items()}
        target_features, target_logits, _unused_labels = outputs["target"]
        probabilities = torch.softmax(target_logits, dim=1)
        val_features, val_logits, val_labels = outputs["source_val"]
        losses = nn.functional.cross_entropy(val_logits, val_labels, reduction="none").numpy()
        weights = validators.density_ratios(outputs["source_train"][0].numpy(), target_features.numpy(),
                                            val_features.numpy(), seed=self.seed)
        return {"target_entropy": validators.mean_entropy(probabilities),
                "target_im": validators.information_maximization(probabilities),
                "target_snd": validators.soft_neighborhood_density(probabilities),
                "dev_risk": validators.deep_embedded_validation(losses, weights)}


def domain_gap(source: np.ndarray, target: np.ndarray, seed: int) -> dict[str, float]:
    return {"mmd": feature_mmd(source, target, seed=seed), "a_distance": proxy_a_distance(source, target, seed=seed)}


@PIPELINES.register("adaptation")
def run_adaptation(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    target_name, target_root = target_names(cfg)
    source = load_run_data(cfg.data, cfg.seed)
    target = load_run_data(cfg.data, cfg.seed, name=target_name, root=target_root)
    if len(target.classes) != len(source.classes):
        raise DataError(f"target {target_name} has {len(target.classes)} classes but source {source.name} has "
                        f"{len(source.classes)}; domain adaptation needs the same label set")
    if target.classes != source.classes:
        log.warning("Source and target class names differ; classes are matched by position: %s vs %s",
                    source.classes, target.classes)
    prepared = prepare_model(ctx, len(source.classes))
    model, placement = prepared.model, ctx.placement
    tap = feature_tap(model, prepared.built.head_name, cfg.adaptation)
    loaders = make_loaders(ctx, source, prepared.geometry)
    eval_tf = build_transform(prepared.geometry, None, train=False)
    train_tf = build_transform(prepared.geometry, cfg.data.augment, train=True)
    target_train = make_loader(ImageDataset(target.splits["train"], train_tf), cfg.train.batch_size, True,
                               cfg.seed + 1, cfg.device.num_workers)
    target_test = make_loader(ImageDataset(target.splits["test"], eval_tf), cfg.train.eval_batch_size, False,
                              cfg.seed, cfg.device.num_workers)

    source_before = extract_features(model, tap, loaders.test, placement)
    target_before = extract_features(model, tap, target_test, placement)
    gap_before = domain_gap(source_before, target_before, cfg.seed)

    feature_dim = source_before.shape[1] if cfg.adaptation.features == "pooled" else len(source.classes)
    method = build_method(cfg.adaptation, feature_dim, len(source.classes), seed=cfg.seed)
    method_groups = []
    if method is not None:
        method.to(ctx.device)
        if any(p.requires_grad for p in method.parameters()):  # e.g. DANN's discriminator: its own group
            method_groups.append({"params": [p for p in method.parameters() if p.requires_grad],
                                  "lr": cfg.train.lr * method.lr_mult, "stage": cfg.adaptation.method})
    step = AdaptationStep(model, tap, placement, method, cfg.adaptation.features, cfg.train.label_smoothing)
    select_by = cfg.adaptation.select_by
    engine = make_engine(ctx, prepared, step, PairedBatches(loaders.train, target_train), loaders.val,
                         method_groups, auxiliary=method, select_by=validators.SELECTION[select_by])
    eval_batch, workers = cfg.train.eval_batch_size, cfg.device.num_workers
    score = LabelFreeValidators(model, tap, placement, {
        "target": sample_loader(target.splits["train"], eval_tf, eval_batch, cfg.seed, workers),
        "source_train": sample_loader(source.splits["train"], eval_tf, eval_batch, cfg.seed, workers),
        "source_val": sample_loader(source.splits["val"], eval_tf, eval_batch, cfg.seed, workers)}, cfg.seed)

    def target_columns(row: dict) -> dict[str, float]:
        if method is not None:
            method.end_epoch(row, cfg.train.epochs)  # the warm-up's end is decided on whole epochs
        # target_acc is reported only; the validators' columns are what selection may use.
        return {"source_val_acc": row["val_acc"], **score(), "target_acc": engine.evaluate(target_test).acc}

    engine.epoch_metrics = target_columns
    fit = engine.fit()
    if method is not None:
        method.check_history(fit.history)
    engine.load_best()
    test = engine.evaluate(loaders.test)
    target_result = engine.evaluate(target_test)
    source_after = extract_features(model, tap, loaders.test, placement)
    target_after = extract_features(model, tap, target_test, placement)
    gap_after = domain_gap(source_after, target_after, cfg.seed)
    if cfg.train.plots:
        plot_domain_features({"before": (source_before, target_before), "after": (source_after, target_after)},
                             ctx.run_dir / "features.png", method=cfg.adaptation.feature_plot, seed=cfg.seed,
                             labels=(source.name, target.name))

    save_model_file(ctx, prepared, source)
    metrics = base_metrics(ctx, cfg.adaptation.method if cfg.adaptation.method != "none" else "source_only",
                           prepared, source, fit, test)
    metrics.update({
        "adaptation": cfg.adaptation.method,
        "source": source.name,
        "target": target.name,
        "selection": f"adaptation.select_by={select_by}: the epoch of the best "
                     f"{'/'.join(validators.SELECTION[select_by])} (target labels only for reporting)",
        "select_by": select_by,
        # What each label-free validator would have picked, and that epoch's target accuracy (report only).
        "validator_picks": {name: {"epoch": epoch, "target_acc": float(fit.history["target_acc"][epoch - 1])}
                            for name, epoch in validators.pick_epochs(fit.history).items()},
        "source_test_acc": test.acc,
        "target_acc": target_result.acc,
        "target_acc_last": float(fit.history["target_acc"].iloc[-1]),
        "target_train_size": len(target.splits["train"]),
        "target_test_size": len(target.splits["test"]),
        "domain_gap_before": gap_before,
        "domain_gap_after": gap_after,
    })
    if method is not None:
        metrics.update(method.metrics(fit.history))
        aligned = fit.history.index[fit.history["lambda"] > 0] if "lambda" in fit.history else []
        metrics["alignment_start_epoch"] = int(fit.history["epoch"][aligned[0]]) if len(aligned) else None
        metrics["collapsed"] = collapsed(fit.history, len(source.classes)) is not None
    write_run_artifacts(ctx, metrics, test, source.classes, history=fit.history, data=source)
    return metrics
