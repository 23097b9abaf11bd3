"""Hydra callbacks: a sweep reports failed jobs in one line each and exits non-zero at the end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILED_FILE = "failed.json"


class SweepStatus(Callback):
    """After a multirun, list the jobs that failed (each wrote failed.json) and exit with code 2."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(p.parent for p in sweep_dir.glob("*/.hydra"))
        failed = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{FAILED_FILE}"))]
        if failed:
            for job in failed:
                print(f"tlrun: error: job {job['job']} ({job['overrides']}): {job['error']}", file=sys.stderr)
            print(f"tlrun: error: {len(failed)} of {len(jobs)} sweep jobs failed; see {sweep_dir}", file=sys.stderr)
            sys.exit(2)
