"""Hydra callbacks: before a run, validate the config Hydra composed (before it makes the run folder); at
the end of a sweep, rebuild its summary and report failed jobs in one line each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tlrun.sweep import FAILED_FILE, UnreadableFile, find_jobs, read_json_object, write_report


class ValidateRun(Callback):
    """Validate the run's config as Hydra composed it, between composition and the run folder's creation
    (Hydra calls on_run_start before run_job makes the folder): a refused config leaves nothing on disk,
    and the command composes its config once for this instead of once more beforehand."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from tlrun.cli import debug_mode, fail
        from tlrun.config import validate_config
        from tlrun.errors import TlrunError
        from tlrun.runner import one_line

        try:
            validate_config(config)
        except TlrunError as exc:
            if debug_mode():
                raise
            fail(one_line(str(exc)), exc.exit_code)


class SweepStatus(Callback):
    """After a multirun: sweep_summary.csv + sweep_heatmap.png (final statuses), then list the jobs
    that failed (each wrote failed.json) and exit with code 2. Each job also rewrites the summary when
    it ends, so it exists even if Hydra never reaches this point."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = find_jobs(sweep_dir)
        if jobs:
            report = write_report(sweep_dir, final=True)
            print(f"tlrun: sweep summary {report.summary} ({report.jobs} jobs, {report.failed} failed)")
        failed = []
        for path in sorted(sweep_dir.glob(f"*/{FAILED_FILE}")):
            try:
                failed.append(read_json_object(path))
            except UnreadableFile as exc:  # a job killed while writing it: still a failed job
                failed.append({"job": path.parent.name, "overrides": "", "error": str(exc)})
        if failed:
            for job in failed:
                print(f"tlrun: error: job {job['job']} ({job['overrides']}): {job['error']}", file=sys.stderr)
            print(f"tlrun: error: {len(failed)} of {len(jobs)} sweep jobs failed; see {sweep_dir}", file=sys.stderr)
            sys.exit(2)
