"""Checkpoints written atomically (temp file + rename: a kill never leaves a torn file)."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlrun.errors import CheckpointError


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temp file, fsync, rename: the previous file stays whole until the new one is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a failed write as RuntimeError
        if isinstance(exc, RuntimeError) and "write" not in str(exc).lower():
            raise
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        code = getattr(exc, "errno", None)
        reason = "the disk is full" if code == errno.ENOSPC else getattr(exc, "strerror", None) or "the write failed"
        raise CheckpointError(f"could not write {path}: {reason} ({kept}); free space or point "
                              "hydra.run.dir / data.cache_dir elsewhere, then resume with train.resume") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
