"""Experiment trackers (``logger=`` group): what a run reports besides its own run folder.

A :class:`Tracker` is opened by the runner before the pipeline starts (so a tracker that cannot be
reached fails the run before any training), receives every ``ft_history.csv`` row as the epoch ends
and the finished run's metrics and artefacts, and is closed with the run's outcome. Pipelines see it
as ``RunContext.tracker``; runs nested inside a job (the KD teacher stage) get the no-op tracker.
Light module: the tracker libraries are imported only when a tracker is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from tlrun.errors import TlrunError

# In the run folder: which tracker run the folder reports to (MLflow's run id), so a resume continues it.
TRACKING_FILE = "tracking.json"


class TrackerError(TlrunError):
    """A tracker that is not installed, cannot be reached or is misconfigured: one line, exit 2, before
    training. ``problem`` alone is the warning when ``logger.fail_on_error=false`` lets the run go on."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}, or set logger.fail_on_error=false")
        self.problem = problem


class Tracker:
    """The no-op tracker (``logger=none``) and the interface every tracker implements."""

    def log_epoch(self, row: dict) -> None:
        """One ``ft_history.csv`` row (``row["epoch"]`` is the step), right after it was written."""

    def log_run(self, metrics: dict, run_dir: Path) -> None:
        """The finished run: ``metrics.json``'s numbers and the run folder's artefacts."""

    def close(self, error: Optional[BaseException] = None) -> None:
        """The run ended: finished (``error`` None), interrupted (resumable) or failed."""


def open_tracker(cfg: DictConfig, run_dir: Path) -> Tracker:
    """The trackers ``cfg.logger`` selects, connected and checked; the no-op tracker for logger=none."""
    if cfg.logger.tensorboard is None and cfg.logger.mlflow is None:
        return Tracker()
    from tlrun.tracking.backends import open_backends

    return open_backends(cfg, run_dir)
