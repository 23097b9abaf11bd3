"""Checkpoints written atomically (temp file + rename: a kill never leaves a torn file) and read
with the safe unpickler only (``weights_only=True``: tensors and plain data, never code)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from tlrun.errors import CheckpointError
from tlrun.paths import atomic_path

log = logging.getLogger(__name__)

# Opt-in for files written by older tlrun versions (their checkpoints held NumPy objects): with it, a
# file the safe unpickler refuses is loaded with the full unpickler, which can run code from the file.
TRUST_ENV = "TLRUN_TRUST_UNSAFE_FILES"
TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")  # what save_atomic and the caches write before renaming


def load_file(path: Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` with the safe unpickler; a refused, truncated or foreign file is one CheckpointError
    line naming ``what`` it should have been (e.g. "a tlrun model file")."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"cannot read {path}: the file is truncated or not {what}") from exc
        if os.environ.get(TRUST_ENV) == "1":
            log.warning("%s holds Python objects beyond tensors and plain data; loading it with the full "
                        "unpickler because %s=1", path, TRUST_ENV)
            return torch.load(path, map_location=map_location, weights_only=False)
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise CheckpointError(f"refusing to load {path}: it holds Python objects "
                              f"({found.group(1) if found else 'beyond tensors and plain data'}) whose unpickling "
                              f"can run code, which {what} never contains; if you wrote it yourself with an older "
                              f"tlrun and trust it, set {TRUST_ENV}=1") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({type(exc).__name__}): the file is truncated or not "
                              f"{what}") from exc


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files of writers that died mid-write (SIGKILL, power loss) in ``folder``: a
    ``.<name>.tmp-<pid>`` whose process no longer exists. Live writers' files are left alone."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        match = TEMP_FILE.match(path.name)
        if match and not _process_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        log.info("Removed %d stale temp file(s) in %s", len(removed), folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has no write in progress when it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temp file, fsync, rename: the previous file stays whole until the new one is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as exc:
        # torch's zip writer reports a failed write as RuntimeError ("file write failed", "unexpected pos"):
        # the object was serialisable, so a RuntimeError here is the file system's.
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        code = getattr(exc, "errno", None)
        full = code in (errno.ENOSPC, errno.EDQUOT) or (code is None and _disk_nearly_full(path.parent))
        reason = "the disk is full" if full else getattr(exc, "strerror", None) or "the write failed"
        raise CheckpointError(f"could not write {path}: {reason} ({kept}); free space or point "
                              "hydra.run.dir / data.cache_dir elsewhere, then resume with train.resume") from exc


def _disk_nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < margin


def capture_rng() -> dict:
    """Every global RNG state, as tensors and plain numbers (the safe unpickler reads them back)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        np.random.set_state((numpy_state["name"], numpy_state["keys"].cpu().numpy().astype(np.uint32),
                             numpy_state["position"], numpy_state["has_gauss"], numpy_state["gauss"]))
    else:  # a checkpoint of tlrun 0.1 (loaded with TLRUN_TRUST_UNSAFE_FILES=1)
        np.random.set_state(numpy_state)
    # RNG states are CPU byte tensors, whatever map_location the checkpoint was loaded with (a resume on a GPU).
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _generators(stream: Any, found: dict[int, Any]) -> dict[int, Any]:
    """The torch/NumPy generators that decide a training stream's order and augmentation draws:
    a DataLoader's, those of PairedBatches' two loaders, an episode sampler's."""
    for value in (getattr(stream, "generator", None), getattr(stream, "rng", None)):
        if isinstance(value, (torch.Generator, np.random.Generator)):
            found.setdefault(id(value), value)
    for child in ("source", "target", "sampler"):
        nested = getattr(stream, child, None)
        if nested is not None and nested is not stream:
            _generators(nested, found)
    return found


def capture_stream_rng(stream: Any) -> list:
    return [g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state
            for g in _generators(stream, {}).values()]


def restore_stream_rng(stream: Any, states: list) -> None:
    generators = list(_generators(stream, {}).values())
    if len(generators) != len(states):
        raise ValueError(f"the checkpoint holds {len(states)} data-order generators, this run has {len(generators)}")
    for generator, state in zip(generators, states):
        if isinstance(generator, torch.Generator):
            generator.set_state(state)
        else:
            generator.bit_generator.state = state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng(seed: Optional[int] = None) -> Iterator[None]:
    """Run the block with its own random stream (seeded with ``seed`` when given) and give the caller its
    global RNG states back afterwards: work done inside (a teacher stage trained in-process) cannot shift
    what happens next, so a run is the same whether that work ran or came from a cache."""
    saved = capture_rng()
    if seed is not None:
        seed_everything(seed)
    try:
        yield
    finally:
        restore_rng(saved)
