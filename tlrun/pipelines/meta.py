"""Meta-distillation (MAML + KD) and its few-shot baselines, evaluated on held-out classes.

Classes are split into meta-train and meta-test (``distill.meta_test_classes``; default: the last
half). Episodes for training come from the train split of the meta-train classes, validation
episodes from their val split, and meta-test episodes from every image of the held-out classes —
which neither the student nor a teacher trained by tlrun ever sees.

Modes (``distill.meta_mode``):
  meta_distill  inner loop: α·T²·KL(teacher ‖ student) + (1−α)·CE on the support set; outer: CE
                (+ ``outer_alpha`` KD) of the adapted student on the query set.
  maml          the same loop without a teacher (inner CE).
  protonet      prototypes on the teacher's features; nothing is trained.
  kd_finetune   Hinton KD on the meta-train classes, then per episode a prototype-initialised head
                on the student's features, tuned on the support set.
The teacher's soft targets for an episode are its ProtoNet scores (the teacher's head knows only its
training classes); the teacher is trained on the meta-train classes only.

BatchNorm: the student's BN layers use the statistics of the batch they see (support or query of
one episode; no running averages), as in MAML — every episode is normalised by itself, in training
and evaluation alike.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tlrun.artifacts import LoadedModel
from tlrun.data.datasets import ImageDataset
from tlrun.data.episodes import Episode, EpisodeSampler, EpisodeStream
from tlrun.data.loaders import make_loader
from tlrun.data.sources import ImageSet
from tlrun.data.splits import RunData, load_run_data
from tlrun.data.transforms import build_transform
from tlrun.engine import EvalResult, Placement, StepOutput, TrainStep
from tlrun.errors import ConfigError
from tlrun.features import FeatureTap
from tlrun.freeze import count_params
from tlrun.methods.kd import distillation_loss
from tlrun.methods.maml import Params, adapt, detached_copy, forward_with, trainable_params
from tlrun.methods.protonet import class_prototypes, prototype_head, prototype_logits
from tlrun.models.factory import find_head
from tlrun.pipelines.common import (PIPELINES, PreparedModel, RunContext, base_metrics, make_engine, prepare_model,
                                    save_model_file, write_run_artifacts)
from tlrun.pipelines.distill import fit_kd_student, load_teacher, refuse_batch_mixing

log = logging.getLogger(__name__)

EPISODE_SEED_OFFSET = 10_007  # meta-test episodes depend on the seed, not on the mode: modes compare paired


# --- class split and episode sets ------------------------------------------------------------------

@dataclass
class ClassSplit:
    train: list[int]
    test: list[int]


def split_classes(classes: list[str], held_out: Optional[list], n_way: int) -> ClassSplit:
    if held_out:
        names = [str(c) for c in held_out]
        unknown = [c for c in names if c not in classes]
        if unknown:
            raise ConfigError(f"distill.meta_test_classes names {', '.join(unknown)}, which the data does not have; "
                              f"choose among {', '.join(classes)}")
        test = [classes.index(c) for c in names]
    else:
        test = list(range(len(classes) - max(n_way, len(classes) // 2), len(classes)))
    train = [i for i in range(len(classes)) if i not in test]
    if len(test) < n_way or len(train) < n_way:
        raise ConfigError(f"{len(classes)} classes split into {len(train)} meta-train / {len(test)} meta-test; "
                          f"{n_way}-way episodes need at least {n_way} on each side: lower distill.n_way or "
                          "set distill.meta_test_classes")
    return ClassSplit(train, test)


def merge_splits(data: RunData) -> ImageSet:
    """Every image of the run's data (meta-test classes are never trained on, so all of it is test)."""
    parts = [data.splits[s] for s in ("train", "val", "test")]
    pixels = [p.pixels for p in parts]
    return ImageSet(labels=np.concatenate([p.labels for p in parts]),
                    pixels=torch.cat(pixels) if all(p is not None for p in pixels) else None,
                    paths=sum((p.paths for p in parts), []) if all(p.paths is not None for p in parts) else None,
                    ids=sum((p.ids for p in parts), []))


def restrict(data: RunData, keep: list[int]) -> RunData:
    """The run's data with only the ``keep`` classes, relabelled 0..k-1 (for KD on meta-train classes)."""
    relabel = np.full(len(data.classes), -1)
    relabel[keep] = np.arange(len(keep))
    splits = {}
    for name, images in data.splits.items():
        subset = images.subset(np.flatnonzero(np.isin(images.labels, keep)))
        subset.labels = relabel[subset.labels]
        splits[name] = subset
    return RunData(data.name, [data.classes[i] for i in keep], splits, data.description)


# --- teacher ---------------------------------------------------------------------------------------

class TeacherFeatures:
    """The teacher's embedding (what its classifier layer reads) of every image of a set, computed once;
    episodes look them up by index."""

    def __init__(self, teacher: LoadedModel, placement: Placement, batch_size: int) -> None:
        self.model, self.geometry = teacher.model.eval(), teacher.geometry
        self.head_name = find_head(teacher.model)[0]
        self.placement, self.batch_size = placement, batch_size

    @torch.inference_mode()
    def embed(self, images: ImageSet) -> torch.Tensor:
        loader = make_loader(ImageDataset(images, build_transform(self.geometry, None, train=False)), self.batch_size,
                             False, 0)
        self.model.eval()
        with FeatureTap(self.model, self.head_name, stop=True) as tap:  # the head itself never runs
            return torch.cat([tap(self.placement.images(batch)).float().cpu() for batch, *_ in loader])


def episode_teacher_logits(features: torch.Tensor, episode: Episode, n_way: int, scale: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's soft targets for an episode's support and query: its ProtoNet scores."""
    prototypes = class_prototypes(features[episode.support_index], episode.support_y, n_way)
    return (prototype_logits(features[episode.support_index], prototypes, scale),
            prototype_logits(features[episode.query_index], prototypes, scale))


# --- the student's episodic step -------------------------------------------------------------------

def use_batch_statistics(model: nn.Module) -> None:
    """BatchNorm normalises each forward pass by its own batch (one episode's support or query)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None


class MetaLearner(TrainStep):
    """Inner-loop adaptation of the student on an episode's support set (MAML / meta-distillation)."""

    def __init__(self, model: nn.Module, placement: Placement, cfg, teacher_features: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.model, self.placement, self.cfg = model, placement, cfg
        self.teacher_features = teacher_features.to(placement.device) if teacher_features is not None else None

    def teacher_logits(self, episode: Episode) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        if self.teacher_features is None:
            return None
        return episode_teacher_logits(self.teacher_features, episode, self.cfg.n_way, self.cfg.teacher_scale)

    def inner_loss(self, support_y: torch.Tensor, teacher_support: Optional[torch.Tensor]
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
        if teacher_support is None:
            return lambda logits: F.cross_entropy(logits, support_y)
        return lambda logits: distillation_loss(logits, teacher_support, support_y, self.cfg.temperature,
                                                self.cfg.alpha)[0]

    def adapt(self, episode: Episode, params: Params, steps: int, first_order: bool
              ) -> tuple[Params, list[float], Optional[torch.Tensor]]:
        teacher = self.teacher_logits(episode)
        support_x, support_y = self.placement.images(episode.support_x), self.placement.labels(episode.support_y)
        loss_fn = self.inner_loss(support_y, teacher[0] if teacher else None)
        adapted, losses = adapt(self.model, params, support_x, loss_fn, steps, self.cfg.inner_lr, first_order)
        return adapted, losses, teacher[1] if teacher else None

    def forward(self, batch: list[Episode], progress: float) -> StepOutput:
        """One outer step: the mean query loss of the adapted copies over a meta-batch of episodes."""
        losses, logits_all, targets_all = [], [], []
        inner_first, inner_last = 0.0, 0.0
        for episode in batch:
            adapted, inner, teacher_query = self.adapt(episode, trainable_params(self.model), self.cfg.inner_steps,
                                                       self.cfg.first_order)
            query_y = self.placement.labels(episode.query_y)
            logits = forward_with(self.model, adapted, self.placement.images(episode.query_x))
            if teacher_query is not None and self.cfg.outer_alpha > 0:
                loss = distillation_loss(logits, teacher_query, query_y, self.cfg.temperature, self.cfg.outer_alpha)[0]
            else:
                loss = F.cross_entropy(logits, query_y)
            losses.append(loss)
            logits_all.append(logits)
            targets_all.append(query_y)
            inner_first += inner[0] / len(batch)
            inner_last += inner[-1] / len(batch)
        return StepOutput(torch.stack(losses).mean(), torch.cat(logits_all).detach(), torch.cat(targets_all),
                          {"inner_loss_first": inner_first, "inner_loss_last": inner_last})

    def predict(self, episode: Episode) -> torch.Tensor:
        """Query logits after adapting a detached copy on the support set (meta-val / meta-test)."""
        adapted, _, _ = self.adapt(episode, detached_copy(trainable_params(self.model)), self.cfg.eval_inner_steps,
                                   first_order=True)
        with torch.no_grad():
            return forward_with(self.model, adapted, self.placement.images(episode.query_x))


# --- evaluation on episodes ------------------------------------------------------------------------

@dataclass
class FewShotResult:
    shots: int
    accuracies: np.ndarray  # per episode
    rows: list[tuple]  # (episode, sample id, true class, predicted class, confidence)
    targets: np.ndarray  # dataset labels, for the confusion matrix
    predictions: np.ndarray

    @property
    def acc(self) -> float:
        return float(self.accuracies.mean())

    @property
    def ci95(self) -> float:
        return float(1.96 * self.accuracies.std(ddof=1) / math.sqrt(len(self.accuracies))) if len(self.accuracies) > 1 else 0.0


def run_episodes(sampler: EpisodeSampler, episodes: int, predict: Callable[[Episode], torch.Tensor],
                 images: ImageSet, classes: list[str]) -> FewShotResult:
    accuracies, rows, targets, predictions = [], [], [], []
    for number in range(episodes):
        episode = sampler.sample()
        probabilities = predict(episode).float().softmax(1).cpu()
        confidence, predicted = probabilities.max(1)
        accuracies.append(float((predicted == episode.query_y).float().mean()))
        for index, truth, guess, conf in zip(episode.query_index.tolist(), episode.query_y.tolist(),
                                             predicted.tolist(), confidence.tolist()):
            true_label, predicted_label = episode.classes[truth], episode.classes[guess]
            rows.append((number, images.ids[index], classes[true_label], classes[predicted_label], round(conf, 5)))
            targets.append(true_label)
            predictions.append(predicted_label)
    return FewShotResult(sampler.k_shot, np.array(accuracies), rows, np.array(targets), np.array(predictions))


def as_eval_result(result: FewShotResult) -> EvalResult:
    """Episode accuracy in the engine's terms (val_acc of the history, best-checkpoint selection)."""
    return EvalResult(float("nan"), result.acc, result.targets, result.predictions, np.zeros((0, 0)))


class ProtoHeadPredictor:
    """kd_finetune at test time: the student's features, a prototype-initialised head, CE on the support."""

    def __init__(self, student: nn.Module, placement: Placement, cfg) -> None:
        self.student, self.placement, self.cfg = student, placement, cfg
        self.head_name = find_head(student)[0]

    def __call__(self, episode: Episode) -> torch.Tensor:
        self.student.eval()
        with torch.no_grad(), FeatureTap(self.student, self.head_name, stop=True) as features:
            support = F.normalize(features(self.placement.images(episode.support_x)), dim=1)
            query = F.normalize(features(self.placement.images(episode.query_x)), dim=1)
        head = prototype_head(class_prototypes(support, self.placement.labels(episode.support_y), self.cfg.n_way),
                              self.cfg.teacher_scale).to(support.device)
        support_y = self.placement.labels(episode.support_y)
        adapted, _ = adapt(head, detached_copy(trainable_params(head)), support,
                           lambda logits: F.cross_entropy(logits, support_y), self.cfg.eval_inner_steps,
                           self.cfg.inner_lr, first_order=True)
        with torch.no_grad():
            return forward_with(head, adapted, query)


# --- the pipeline ----------------------------------------------------------------------------------

@PIPELINES.register("meta")
def run_meta(ctx: RunContext) -> dict:
    cfg, meta = ctx.cfg, ctx.cfg.distill
    mode = meta.meta_mode
    refuse_batch_mixing(cfg, "distill=meta (episodes of support/query images)")
    data = load_run_data(cfg.data, cfg.seed)
    split = split_classes(data.classes, meta.meta_test_classes, meta.n_way)
    log.info("Meta-%s: meta-train classes %s, held-out meta-test classes %s", mode,
             [data.classes[i] for i in split.train], [data.classes[i] for i in split.test])
    test_images = restrict(data, split.test)
    test_pool = merge_splits(test_images)
    metrics: dict = {"meta_mode": mode, "meta_train_classes": [data.classes[i] for i in split.train],
                     "meta_test_classes": list(test_images.classes), "n_way": meta.n_way}

    teacher = teacher_file = None
    if mode != "maml":
        teacher, teacher_file, source = load_teacher(ctx, [data.classes[i] for i in split.train])
        leaked = sorted(set(teacher.classes) & set(test_images.classes))
        if leaked:
            log.warning("The teacher was trained on held-out classes %s: few-shot results are optimistic", leaked)
        metrics.update(teacher=str(teacher_file), teacher_model=teacher.model_name, teacher_source=source,
                       teacher_saw_meta_test_classes=bool(leaked), params_teacher=count_params(teacher.model.parameters()))
    embed = TeacherFeatures(teacher, ctx.placement, cfg.train.eval_batch_size) if teacher else None

    prepared: Optional[PreparedModel] = None
    fit = None
    if mode in ("meta_distill", "maml"):
        prepared, fit, predict = meta_train(ctx, data, split, embed)
    elif mode == "kd_finetune":
        train_data = restrict(data, split.train)
        prepared = prepare_model(ctx, len(train_data.classes))
        fit = fit_kd_student(ctx, train_data, teacher, teacher_file, prepared).fit
        predict = ProtoHeadPredictor(prepared.model, ctx.placement, meta)
    else:  # protonet on the teacher's features
        test_features = embed.embed(test_pool).to(ctx.device)

        def predict(episode: Episode) -> torch.Tensor:
            return episode_teacher_logits(test_features, episode, meta.n_way, meta.teacher_scale)[1]

    geometry = prepared.geometry if prepared else teacher.geometry
    dataset = ImageDataset(test_pool, build_transform(geometry, None, train=False))
    results = []
    for shots in sorted({int(k) for k in meta.eval_shots}):
        sampler = EpisodeSampler(dataset, range(len(test_images.classes)), meta.n_way, shots, meta.n_query,
                                 cfg.seed + EPISODE_SEED_OFFSET + shots, what=f"meta-test {shots}-shot episodes")
        result = run_episodes(sampler, meta.eval_episodes, predict, test_pool, test_images.classes)
        log.info("Meta-test %d-way %d-shot (%s): %.4f ± %.4f over %d episodes", meta.n_way, shots, mode,
                 result.acc, result.ci95, meta.eval_episodes)
        results.append(result)
    return write_meta_artifacts(ctx, data, prepared, fit, results, metrics)


def meta_train(ctx: RunContext, data: RunData, split: ClassSplit, embed: Optional[TeacherFeatures]):
    """MAML / meta-distillation: outer steps on meta-batches of episodes through the shared engine."""
    cfg, meta = ctx.cfg, ctx.cfg.distill
    prepared = prepare_model(ctx, meta.n_way)
    use_batch_statistics(prepared.model)
    train_tf = build_transform(prepared.geometry, cfg.data.augment, train=True)
    eval_tf = build_transform(prepared.geometry, None, train=False)
    train_set = ImageDataset(data.splits["train"], train_tf)
    val_set = ImageDataset(data.splits["val"], eval_tf)
    train_sampler = EpisodeSampler(train_set, split.train, meta.n_way, meta.k_shot, meta.n_query, cfg.seed,
                                   what="meta-train episodes")
    teacher_features = embed.embed(data.splits["train"]) if embed else None
    learner = MetaLearner(prepared.model, ctx.placement, meta, teacher_features)
    val_features = embed.embed(data.splits["val"]).to(ctx.device) if embed else None
    val_learner = MetaLearner(prepared.model, ctx.placement, meta, val_features)

    def validate() -> EvalResult:
        sampler = EpisodeSampler(val_set, split.train, meta.n_way, meta.k_shot, meta.n_query, cfg.seed + 1,
                                 what="meta-val episodes (val split of the meta-train classes)")
        return as_eval_result(run_episodes(sampler, meta.val_episodes, val_learner.predict, data.splits["val"],
                                           data.classes))

    steps = max(1, meta.episodes_per_epoch // meta.meta_batch)
    engine = make_engine(ctx, prepared, learner, EpisodeStream(train_sampler, meta.meta_batch), None,
                         steps_per_epoch=steps, validate=validate)
    fit = engine.fit()
    engine.load_best()
    # Meta-test adaptation uses the held-out classes' own teacher features (when there is a teacher).
    learner.teacher_features = None
    if embed is not None:
        test_pool = merge_splits(restrict(data, split.test))
        learner.teacher_features = embed.embed(test_pool).to(ctx.device)
    return prepared, fit, learner.predict


def write_meta_artifacts(ctx: RunContext, data: RunData, prepared: Optional[PreparedModel], fit,
                         results: list[FewShotResult], metrics: dict) -> dict:
    cfg, meta, run_dir = ctx.cfg, ctx.cfg.distill, ctx.run_dir
    rows = [(r.shots, *row) for r in results for row in r.rows]
    pd.DataFrame(rows, columns=["shots", "episode", "query", "true_class", "predicted_class", "confidence"]
                 ).to_csv(run_dir / "few_shot_predictions.csv", index=False)
    table = {f"{meta.n_way}way_{r.shots}shot": {"acc": r.acc, "ci95": r.ci95, "episodes": len(r.accuracies)}
             for r in results}
    headline = next((r for r in results if r.shots == meta.k_shot), results[-1])
    held_out = list(metrics["meta_test_classes"])
    test = EvalResult(float("nan"), headline.acc, headline.targets, headline.predictions, np.zeros((0, 0)))
    if prepared is not None and fit is not None:
        episode_data = RunData(data.name, [f"way {i}" for i in range(meta.n_way)], data.splits, data.description)
        model_data = episode_data if metrics["meta_mode"] in ("meta_distill", "maml") else restrict(
            data, [data.classes.index(c) for c in metrics["meta_train_classes"]])
        save_model_file(ctx, prepared, model_data)
        metrics = {**base_metrics(ctx, "meta", prepared, data, fit, test), **metrics}
    else:
        metrics = {"pipeline": "meta", "test_acc": headline.acc, "data": data.name, "seed": cfg.seed,
                   "device": str(ctx.device), **metrics}
    metrics["selection"] = ("best meta-val accuracy (episodes from the val split of the meta-train classes)"
                            if metrics["meta_mode"] in ("meta_distill", "maml") else metrics.get("selection", "none"))
    metrics["test_acc_is"] = f"meta-test {meta.n_way}-way {headline.shots}-shot episode accuracy"
    metrics["few_shot"] = table
    for key, value in table.items():
        metrics[f"few_shot_{key}_acc"], metrics[f"few_shot_{key}_ci95"] = value["acc"], value["ci95"]
    metrics.update(inner_steps=meta.inner_steps, inner_lr=meta.inner_lr, first_order=meta.first_order,
                   temperature=meta.temperature, alpha=meta.alpha, k_shot=meta.k_shot)
    write_run_artifacts(ctx, metrics, test, held_out, history=fit.history if fit is not None else None,
                        curves_title=f"{metrics['meta_mode']}: {cfg.model.name}",
                        confusion_title=f"meta-test {meta.n_way}-way {headline.shots}-shot queries (acc {headline.acc:.4f})",
                        summary_keys=["pipeline", "meta_mode", "model", "data", "test_acc",
                                      *[f"few_shot_{k}_acc" for k in table], "params_total", "wall_time_s"])
    return metrics
