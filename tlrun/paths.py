"""Output folders checked before anything is written (no torch import: the CLIs use this first)."""

from __future__ import annotations

import os
from pathlib import Path

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
