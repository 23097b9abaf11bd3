"""Output folders checked before anything is written (no torch import: the CLIs use this first)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from tlrun.errors import ConfigError


def check_can_create(path: Path, key: str) -> None:
    """ConfigError naming ``key`` unless ``path`` is a folder that exists writable or could be made.

    Nothing is created: the nearest existing ancestor must be a writable folder, and no part of the
    path may be a file."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling symlink cannot become a folder
            raise ConfigError(f"{key}={path}: {probe} is a broken symlink; choose another {key}")
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path}: {probe} is a file, not a folder; choose another {key}")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is read-only" if probe == path else f"cannot be created: {probe} is read-only"
        raise ConfigError(f"{key}={path} {what}; choose a writable {key}")


def output_dir(out: Optional[str], default_root: str, result_file: str) -> Path:
    """A companion command's output folder (``--out``, else ``<default_root>/<date>_<time>``), refused with
    one line, nothing created, if it already holds ``result_file`` or cannot be made."""
    path = Path(out).expanduser() if out else Path(default_root) / time.strftime("%Y-%m-%d_%H-%M-%S")
    if (path / result_file).exists():
        raise ConfigError(f"{path} already holds {result_file}; tlrun never overwrites results: choose another --out")
    check_can_create(path, "--out")
    return path
