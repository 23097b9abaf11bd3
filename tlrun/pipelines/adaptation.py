"""Unsupervised domain adaptation: labelled source, unlabelled target (DANN, MMD, source-only).

Every step draws one source and one target batch; an epoch is as long as the longer loader and the
shorter one is cycled, never zip-truncated. Target labels are used only for reporting; the model is
selected by source validation accuracy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlrun.data.pipeline import ImageDataset, PairedBatches, RunData, build_transform, load_run_data, make_loader
from tlrun.engine import Engine, Placement, StepOutput
from tlrun.errors import ConfigError, DataError
from tlrun.methods.domain_gap import feature_mmd, proxy_a_distance
from tlrun.pipelines.common import (PIPELINES, RunContext, base_metrics, engine_options, make_loaders,
                                    make_optimizer, prepare_model, save_model_file, write_run_artifacts)
from tlrun.report import plot_domain_features

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

GAP_SAMPLES = 1000  # per domain, for the MMD / A-distance / plot of the feature space


class FeatureTap:
    """Keeps the features of the last forward: the input of the classifier head (the backbone's pooled
    features) or, with ``layer``, the output of that module (e.g. LeNet's ``pool``: the DANN paper
    attaches its domain classifier after the convolutional feature extractor)."""

    def __init__(self, model: nn.Module, head_name: str, layer: Optional[str] = None) -> None:
        self.features: Optional[torch.Tensor] = None
        if layer:
            names = [name for name, _ in model.named_modules() if name]
            if layer not in names:
                raise ConfigError(f"adaptation.feature_layer={layer} is not a module of the model; "
                                  f"choose one of: {', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
            model.get_submodule(layer).register_forward_hook(lambda _m, _args, output: self._keep(output))
        else:
            model.get_submodule(head_name).register_forward_pre_hook(lambda _m, args: self._keep(args[0]))

    def _keep(self, features: torch.Tensor) -> None:
        self.features = features.flatten(1)


class Alignment(Protocol):
    """A domain loss on source/target features; ``progress`` in [0, 1] drives its weight schedule."""

    def __call__(self, source: torch.Tensor, target: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        ...


class AdaptationStep:
    """Cross-entropy on the source batch, plus the domain loss between source and target features.

    Source and target go through the network in one concatenated batch, so BatchNorm sees both
    domains (as in DANN/DAN). Without an alignment loss (source-only) the target batch is unused.
    """

    def __init__(self, model: nn.Module, tap: FeatureTap, placement: Placement, alignment: Optional[Alignment],
                 loss_name: str, align_on: str = "pooled", label_smoothing: float = 0.0) -> None:
        self.model, self.tap, self.placement = model, tap, placement
        self.alignment, self.loss_name, self.align_on = alignment, loss_name, align_on
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def __call__(self, batch: Any, progress: float) -> StepOutput:
        (source_images, source_labels), (target_images, _unused_target_labels) = batch
        source_images = self.placement.images(source_images)
        source_labels = self.placement.labels(source_labels)
        if self.alignment is None:
            logits = self.model(source_images)
            cls_loss = self.criterion(logits, source_labels)
            return StepOutput(cls_loss, logits, source_labels, {"cls_loss": cls_loss.item()})
        target_images = self.placement.images(target_images)
        count = len(source_images)
        logits_all = self.model(torch.cat([source_images, target_images]))
        features = self.tap.features if self.align_on == "pooled" else logits_all
        logits = logits_all[:count]
        cls_loss = self.criterion(logits, source_labels)
        domain_loss, stats = self.alignment(features[:count], features[count:], progress)
        logs = {"cls_loss": cls_loss.item(), self.loss_name: domain_loss.item(), **stats}
        return StepOutput(cls_loss + domain_loss, logits, source_labels, logs)


def build_alignment(cfg, feature_dim: int) -> tuple[Optional[Alignment], Optional[nn.Module], str]:
    """(alignment loss, its trainable modules, history column name) for adaptation.method."""
    from tlrun.methods.dann import DomainAdversarialLoss, dann_lambda
    from tlrun.methods.mmd import MultiKernelMMDLoss

    if cfg.method == "none":
        return None, None, "domain_loss"
    if cfg.method == "dann":
        # The gradient reversal layer owns the lambda schedule; the loss is added unweighted.
        adversarial = DomainAdversarialLoss(feature_dim, hidden=cfg.discriminator_width, depth=cfg.discriminator_depth,
                                            dropout=cfg.discriminator_dropout, batch_norm=cfg.discriminator_batch_norm,
                                            activation=cfg.discriminator_activation,
                                            max_weight=cfg.weight, gamma=cfg.gamma, schedule=cfg.schedule)

        def dann(source: torch.Tensor, target: torch.Tensor, progress: float):
            adversarial.set_progress(progress)
            return adversarial(source, target)

        return dann, adversarial, "domain_loss"
    mmd = MultiKernelMMDLoss(multipliers=tuple(cfg.mmd_multipliers), estimator=cfg.mmd_estimator)

    def weighted_mmd(source: torch.Tensor, target: torch.Tensor, progress: float):
        weight = cfg.weight if cfg.schedule == "constant" else dann_lambda(progress, cfg.weight, cfg.gamma)
        value = mmd(source, target)
        return weight * value, {"lambda": weight}

    return weighted_mmd, None, "mmd_loss"


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


# Below this fraction of first-layer units firing, the discriminator is (nearly) a constant function.
COLLAPSED_DISCRIMINATOR = 0.1


def warn_if_discriminator_collapsed(history: pd.DataFrame) -> None:
    """One warning when a ReLU discriminator went silent in the last epoch (see DomainDiscriminator); leaky
    units keep a gradient when they do not fire, so the check is for ``discriminator_activation=relu``."""
    if "discriminator_active" not in history or history.empty:
        return
    active = float(history["discriminator_active"].iloc[-1])
    if active < COLLAPSED_DISCRIMINATOR:
        log.warning("The domain discriminator collapsed: %.0f%% of its hidden units fire in the last epoch, so it "
                    "outputs a near-constant and passes almost no gradient to the features (domain_acc near 0.5 here "
                    "is not an equilibrium). Use adaptation.discriminator_activation=leaky_relu or "
                    "adaptation.discriminator_batch_norm=true.", 100 * active)


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
    tap = FeatureTap(model, prepared.built.head_name, cfg.adaptation.feature_layer)
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
    alignment, auxiliary, loss_name = build_alignment(cfg.adaptation, feature_dim)
    if auxiliary is not None:
        auxiliary.to(ctx.device)
    param_groups = prepared.plan.param_groups(model, cfg.train.lr)
    if auxiliary is not None:
        param_groups.append({"params": list(auxiliary.parameters()), "lr": cfg.train.lr * cfg.adaptation.discriminator_lr_mult,
                             "stage": "discriminator"})
    optimizer = make_optimizer(cfg.train, param_groups)
    step = AdaptationStep(model, tap, placement, alignment, loss_name, cfg.adaptation.features,
                          cfg.train.label_smoothing)
    engine = Engine(model=model, step=step, optimizer=optimizer, train_loader=PairedBatches(loaders.train, target_train),
                    val_loader=loaders.val, placement=placement, run_dir=ctx.run_dir, freeze_plan=prepared.plan,
                    auxiliary=auxiliary, **engine_options(cfg))

    def target_columns(row: dict) -> dict[str, float]:
        return {"source_val_acc": row["val_acc"], "target_acc": engine.evaluate(target_test).acc}

    engine.epoch_metrics = target_columns
    fit = engine.fit()
    if cfg.adaptation.method == "dann" and cfg.adaptation.discriminator_activation == "relu":
        warn_if_discriminator_collapsed(fit.history)
    engine.load_best()
    test = engine.evaluate(loaders.test)
    target_result = engine.evaluate(target_test)
    source_after = extract_features(model, tap, loaders.test, placement)
    target_after = extract_features(model, tap, target_test, placement)
    gap_after = domain_gap(source_after, target_after, cfg.seed)
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
        "selection": "best source val_acc checkpoint (target labels only for reporting)",
        "source_test_acc": test.acc,
        "target_acc": target_result.acc,
        "target_acc_last": float(fit.history["target_acc"].iloc[-1]),
        "target_train_size": len(target.splits["train"]),
        "target_test_size": len(target.splits["test"]),
        "domain_gap_before": gap_before,
        "domain_gap_after": gap_after,
    })
    if cfg.adaptation.method == "dann":  # the state of the adversarial game at the end (label-free)
        metrics.update({"domain_acc_last": float(fit.history["domain_acc"].iloc[-1]),
                        "discriminator_active_last": float(fit.history["discriminator_active"].iloc[-1])})
    write_run_artifacts(ctx, source, fit, test, metrics)
    return metrics
