"""Fine-tuning: a pretrained backbone, a new head, a freeze strategy, cross-entropy.

With a frozen prefix and deterministic transforms the prefix runs once (``tlrun.feature_cache``)
and the engine trains the rest on its cached outputs; the test set goes through the whole model."""

from __future__ import annotations

from typing import Optional

from tlrun.data.splits import RunData, load_run_data
from tlrun.errors import ConfigError
from tlrun.engine import ClassificationStep
from tlrun.feature_cache import build_feature_cache, forward_from_features
from tlrun.pipelines.common import (PIPELINES, RunContext, base_metrics, make_engine, make_loaders, prepare_model,
                                    save_model_file, write_run_artifacts)
from tlrun.progressive import fit_phases, phase_geometry


@PIPELINES.register("finetune")
def run_finetune(ctx: RunContext, data: Optional[RunData] = None) -> dict:
    """``data``: already loaded for this config (a teacher stage keys its cache by it), else loaded here."""
    cfg = ctx.cfg
    data = data or load_run_data(cfg.data, cfg.seed)
    prepared = prepare_model(ctx, len(data.classes))
    phases = cfg.train.get("progressive_resizing")
    if phases and cfg.train.get("resume"):
        raise ConfigError("train.resume cannot continue a progressive-resizing run (its phases rebuild the loaders); "
                          "start it again without train.resume, or drop train.progressive_resizing")
    if phases:
        prepared.geometry = phase_geometry(prepared.geometry, int(phases[0].image_size))
    loaders = make_loaders(ctx, data, prepared.geometry)
    features, cache_info = build_feature_cache(cfg, prepared.model, prepared.plan, ctx.placement,
                                               getattr(prepared.geometry, "crop_size", 0), loaders.train.dataset,
                                               loaders.val.dataset, cfg.seed)
    engine = make_engine(ctx, prepared, ClassificationStep(prepared.model, ctx.placement, cfg.train.label_smoothing),
                         features.train if features else loaders.train, features.val if features else loaders.val)
    if phases:  # the saved model and its test evaluation use the last phase's size (no feature cache)
        fit, prepared.geometry, loaders = fit_phases(engine, phases, lambda g: make_loaders(ctx, data, g),
                                                     prepared.geometry, cfg.train.lr)
        engine.load_best()
    else:
        with forward_from_features(prepared.model, features.cut if features else None):
            fit = engine.fit()
            engine.load_best()
    test = engine.evaluate(loaders.test)
    save_model_file(ctx, prepared, data)
    metrics = base_metrics(ctx, "finetune", prepared, data, fit, test)
    metrics["feature_cache"] = cache_info
    write_run_artifacts(ctx, metrics, test, data.classes, history=fit.history, data=data)
    return metrics
