"""Progressive resizing: train at small images first, then larger ones (fastai's recipe), as phases of
one shared engine. The optimizer and its state carry across phases; each phase has its own input size,
epochs and peak learning rate (a fresh schedule), and the history records the size of every epoch.
Model selection happens within the last phase, at the final size the model is evaluated and saved at."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Sequence

from tlrun.data.transforms import ImageGeometry
from tlrun.engine import Engine, FitResult

log = logging.getLogger(__name__)


def phase_geometry(base: ImageGeometry, size: int) -> ImageGeometry:
    """``base`` at crop ``size``, keeping its resize/crop ratio (e.g. 256/224) and normalisation."""
    return replace(base, crop_size=size, resize_size=round(size * base.resize_size / base.crop_size))


def fit_phases(engine: Engine, phases: Sequence[Any], loaders_for: Callable[[ImageGeometry], Any],
               base: ImageGeometry, lr: float) -> tuple[FitResult, ImageGeometry, Any]:
    """Run each phase on ``engine``; returns the last fit (its history holds every phase), the final
    geometry and the final loaders (``loaders_for(geometry)`` gives objects with .train and .val)."""
    fit, geometry, loaders = None, base, None
    for number, phase in enumerate(phases, start=1):
        geometry = phase_geometry(base, int(phase.image_size))
        loaders = loaders_for(geometry)
        phase_lr = float(phase.lr) if phase.lr is not None else lr
        log.info("Progressive resizing phase %d/%d: %d px, %d epochs, lr %g", number, len(phases),
                 geometry.crop_size, phase.epochs, phase_lr)
        engine.start_phase(loaders.train, loaders.val, int(phase.epochs), phase_lr / lr,
                           {"image_size": geometry.crop_size})
        fit = engine.fit()
    assert fit is not None
    return fit, geometry, loaders
