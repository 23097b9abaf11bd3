"""Content-keyed caches under ``data.cache_dir``: the KD teacher stage and logits, frozen features.

A key hashes everything the cached value depends on (weights, images, preprocessing), so a
cache entry is never stale: change any input and the key, hence the file, changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from omegaconf import DictConfig

from tlrun.data.sources import ImageSet, default_cache_dir


def digest(obj: Any) -> str:
    """Short sha256 of a JSON-able description (dict keys sorted, other objects by str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:20]


def tensors_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hash of named tensors' contents (e.g. the items of a state dict)."""
    sha = hashlib.sha256()
    for name, tensor in named_tensors:
        sha.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        sha.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:20]


def images_digest(images: ImageSet) -> str:
    """Which images, with which labels, with which content: pixels by value, files by path, size
    and modification time (an edited file changes the key without re-reading every file)."""
    sha = hashlib.sha256()
    sha.update(json.dumps([images.ids, images.labels.tolist()]).encode())
    if images.pixels is not None:
        sha.update(images.pixels.contiguous().numpy().tobytes())
    for path in images.paths or []:
        stat = Path(path).stat()
        sha.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return sha.hexdigest()[:20]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One process at a time (parallel sweep jobs wait for the first to build the shared item)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_root(cfg: DictConfig) -> Path:
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
