"""Output folders checked before anything is written (no torch import: the CLIs use this first)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator, Optional

from tlrun.errors import ConfigError, WeightsError

MODEL_FILE = "ft_model.pt"


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


def run_model_file(path: str | Path) -> Path:
    """The ft_model.pt of a run folder (or the file itself); WeightsError, one line, if there is none."""
    path = Path(path).expanduser()
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise WeightsError(f"no {MODEL_FILE} at {path}; give a finished run folder or its {MODEL_FILE}")
    return file


def output_dir(out: Optional[str], default_root: str, result_file: str) -> Path:
    """A companion command's output folder (``--out``, else ``<default_root>/<date>_<time>``), refused with
    one line, nothing created, if it already holds ``result_file`` or cannot be made."""
    path = Path(out).expanduser() if out else Path(default_root) / time.strftime("%Y-%m-%d_%H-%M-%S")
    if (path / result_file).exists():
        raise ConfigError(f"{path} already holds {result_file}; tlrun never overwrites results: choose another --out")
    check_can_create(path, "--out")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` (``.<name>.tmp-<pid>``) for the block to write; when the block succeeds it is
    flushed to disk and renamed over ``path``, so a reader (or a kill at any instant) sees the old file or the
    new one, never a torn one. On failure the temp file is removed; a block that writes nothing (an optional
    output, e.g. a heatmap without a metric) leaves ``path`` as it was. Stale ones of dead writers are cleaned by
    ``checkpoint.remove_stale_temp_files``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if not tmp.exists():
            return
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One process at a time holds ``path`` (an advisory lock file, created with its folder): parallel sweep
    jobs wait for the first to build a shared cache entry or to rewrite the sweep summary. OSError when the
    lock file cannot be created (a read-only folder): the caller names the fix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
