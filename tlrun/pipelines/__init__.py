"""Training pipelines by name; each builds its parts and runs the shared engine."""

from __future__ import annotations

import importlib
from typing import Callable

# Pipeline name -> module that registers it (imported on demand: a run loads only its own pipeline).
PIPELINE_MODULES = {
    "finetune": "tlrun.pipelines.finetune",
    "adaptation": "tlrun.pipelines.adaptation",
    "kd": "tlrun.pipelines.distill",
    "meta": "tlrun.pipelines.meta",
}


def get_pipeline(name: str) -> Callable:
    from tlrun.pipelines.common import PIPELINES

    if name in PIPELINE_MODULES:
        importlib.import_module(PIPELINE_MODULES[name])
    return PIPELINES.get(name)
