"""Training pipelines by name; each builds its parts and runs the shared engine."""

from __future__ import annotations

from typing import Callable


def get_pipeline(name: str) -> Callable:
    # Importing a pipeline module registers it.
    from tlrun.pipelines import finetune  # noqa: F401
    from tlrun.pipelines.common import PIPELINES

    return PIPELINES.get(name)
