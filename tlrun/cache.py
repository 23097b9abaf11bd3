"""Content-keyed caches under ``data.cache_dir``: the KD teacher stage and logits, frozen features.

A key hashes everything the cached value depends on (weights, images, preprocessing), so a
cache entry is never stale: change any input and the key, hence the file, changes. Each entry is
*sealed* when written (the sha256 of its bytes beside it, ``<file>.sha256``) and checked when read,
so a truncated, overwritten or planted entry is rebuilt instead of used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from omegaconf import DictConfig

from tlrun.data.sources import ImageSet, default_cache_dir
from tlrun.errors import DataError
from tlrun import paths
from tlrun.paths import atomic_path

log = logging.getLogger(__name__)

SEAL_SUFFIX = ".sha256"


def digest(obj: Any) -> str:
    """Short sha256 of a JSON-able description (dict keys sorted, other objects by str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def file_digest(path: Path) -> str:
    return file_sha256(path)[:20]


def folder_digest(folder: Path) -> str:
    """Short sha256 of a folder's content: every file's relative path and bytes (where it lives does not count)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return digest({p.relative_to(folder).as_posix(): file_digest(p) for p in files})


def _seal_path(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)


def seal(path: Path) -> None:
    """Record the content hash of a cache entry just written (``is_intact`` checks it)."""
    with atomic_path(_seal_path(Path(path))) as tmp:
        tmp.write_text(file_sha256(path) + "\n")


def is_intact(path: Path, what: str = "cache entry") -> bool:
    """True when ``path`` exists and its bytes match the hash sealed at write time. A corrupt or unsealed
    entry is removed with a warning, so the caller rebuilds it."""
    path = Path(path)
    if not path.exists():
        return False
    seal_file = _seal_path(path)
    try:
        recorded = seal_file.read_text().strip() if seal_file.is_file() else None
        intact = recorded is not None and path.is_file() and file_sha256(path) == recorded
    except OSError:
        intact = False
    if not intact:
        why = "it has no checksum (written by an older tlrun, or interrupted)" if recorded is None else \
            "its bytes do not match the checksum written with it"
        log.warning("Ignoring %s %s: %s; rebuilding it", what, path, why)
        remove_entry(path)
    return intact


def remove_entry(path: Path) -> None:
    """Delete a cache entry and its seal (a folder entry with everything in it)."""
    import shutil

    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
    _seal_path(path).unlink(missing_ok=True)


def tensors_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hash of named tensors' contents (e.g. the items of a state dict)."""
    sha = hashlib.sha256()
    for name, tensor in named_tensors:
        sha.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        sha.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:20]


def images_digest(images: ImageSet) -> str:
    """Which images, with which labels, with which content: pixels by value, files by path, size,
    inode and modification/change times. Any write, rename or swap of a file updates its change time
    (ctime cannot be set back by the user), so an edit changes the key without re-reading every file."""
    sha = hashlib.sha256()
    sha.update(json.dumps([images.ids, images.labels.tolist()]).encode())
    if images.pixels is not None:
        sha.update(images.pixels.contiguous().numpy().tobytes())
    for text in getattr(images, "texts", None) or []:  # a text set (tlrun.data.text.TextSet) by content
        sha.update(text.encode("utf-8", "surrogatepass") + b"\0")
    for path in images.paths or []:
        stat = Path(path).stat()
        sha.update(f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}".encode())
    return sha.hexdigest()[:20]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """``paths.locked`` for a cache entry: a cache folder that cannot be written is one line naming the fix."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(paths.locked(path))
        except OSError as exc:
            raise DataError(f"cannot write the cache folder {Path(path).parent} ({exc.strerror or exc}); set "
                            "data.cache_dir=<a writable folder> (or TLRUN_CACHE_DIR)") from exc
        yield


def cache_root(cfg: DictConfig) -> Path:
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
