"""Feature cache for frozen backbones: the frozen part runs once, the trainable part trains on its outputs.

A frozen prefix kept in eval mode is a fixed function of the image, so with deterministic training
transforms its outputs are the same every epoch. The algorithm:

1. **Cut** the model where the frozen part ends: at the head's input when only the head trains
   (``freeze=all``), else after the last frozen stage (``freeze=partial``/``early``) when the
   model's forward is a plain chain there (ResNet up to layer3, MobileNetV2/EfficientNet
   ``features``). A probe checks ``suffix(prefix(x)) == model(x)``; a model that does not split
   cleanly (ViT's token glue) trains without the cache.
2. **Compute** the prefix outputs of the train and val images once (eval mode, no grad) into
   ``<cache dir>/features/<key>.npy``. The key covers the frozen weights, the transforms, the image
   contents, the placement and the library versions, so an entry is never stale.
3. **Train** with the model's forward replaced by its suffix while fitting: the engine, optimizer,
   checkpoints and ``ft_model.pt`` all see the whole model, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torchvision
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlrun.cache import cache_root, digest, images_digest, is_intact, locked, remove_entry, seal, tensors_digest
from tlrun.config import random_augmentations
from tlrun.checkpoint import remove_stale_temp_files
from tlrun.data.datasets import ImageDataset
from tlrun.data.loaders import make_loader
from tlrun.engine import Placement
from tlrun.errors import ConfigError
from tlrun.features import FeatureTap
from tlrun.freeze import FreezePlan
from tlrun.models.timm_backbones import model_id
from tlrun.paths import atomic_path

log = logging.getLogger(__name__)

CHUNK = 64  # images per prefix forward while filling the cache


@dataclass(frozen=True)
class Cut:
    """Where the frozen prefix ends. ``kind="head"``: the cached tensor is the head's input and the
    suffix is the head alone; ``kind="blocks"``: it is the output of block ``at`` and the suffix is
    the model's own forward with the frozen ``skipped`` blocks passing their input through."""

    kind: str
    at: str
    skipped: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()  # modules whose weights the cached features do not depend on


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


@contextlib.contextmanager
def forward_from_features(model: nn.Module, cut: Optional[Cut]) -> Iterator[None]:
    """Within the block, ``model(features)`` runs only the trainable suffix (no-op for ``cut=None``).

    Instance attributes shadow ``forward`` so parameters, state-dict keys and the freeze plan's
    module names stay those of the whole model; leaving the block restores the full forward."""
    if cut is None:
        yield
        return
    if cut.kind == "head":
        patched = [model]
        head = model.get_submodule(cut.at)
        model.forward = lambda features: head(features)  # type: ignore[method-assign]
    else:
        patched = [model.get_submodule(name) for name in cut.skipped]
        for block in patched:
            block.forward = _identity  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in patched:
            del module.forward


@torch.inference_mode()
def prefix_output(model: nn.Module, cut: Cut, images: torch.Tensor) -> torch.Tensor:
    """The frozen prefix's output for a batch (the model must be in eval mode); the rest never runs."""
    side = "input" if cut.kind == "head" else "output"
    with FeatureTap(model, cut.at, side=side, flatten=False, stop=True) as tap:
        return tap(images)


def candidate_cut(model: nn.Module, plan: FreezePlan) -> tuple[Optional[Cut], str]:
    """The cut for this freeze plan, or None and why not."""
    if not plan.frozen_stages:
        return None, f"nothing is frozen (freeze={plan.strategy})"
    if plan.frozen_stages != list(range(len(plan.frozen_stages))):
        return None, "the frozen stages are not a prefix of the network"
    if plan.train_frozen_bn:
        return None, "freeze.train_frozen_bn=true updates frozen BatchNorm statistics every step"
    trainable_blocks = tuple(b for i, stage in enumerate(plan.stages) if i not in plan.frozen_stages for b in stage)
    if not trainable_blocks:
        return Cut("head", plan.head, trainable=(plan.head,)), ""
    skipped = tuple(plan.frozen_modules)
    return Cut("blocks", skipped[-1], skipped, trainable_blocks + (plan.head,)), ""


def probe_input(dataset: Optional[Dataset], image_size: int) -> torch.Tensor:
    """Two inputs to probe the cut with: the first two texts of a text set (token ids), else random images."""
    collate = getattr(dataset, "collate", None)
    if collate is not None:
        return collate([dataset[i] for i in range(min(2, len(dataset)))])[0]
    # A private generator: the probe must not shift the run's random stream (cache on/off equivalence).
    return torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def splits_cleanly(model: nn.Module, cut: Cut, placement: Placement, image_size: int,
                   dataset: Optional[Dataset] = None) -> bool:
    """Probe: does the suffix applied to the prefix's output give the model's own output?"""
    was_training = model.training
    model.eval()
    try:
        probe = placement.images(probe_input(dataset, image_size))
        with placement.autocast():
            expected = model(probe).float()
            features = placement.images(prefix_output(model, cut, probe))
            with forward_from_features(model, cut):
                got = model(features).float()
        return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3, atol=1e-4)
    except Exception:  # shape errors: the forward has glue between the frozen blocks (ViT's tokens)
        return False
    finally:
        model.train(was_training)


def plan_cut(cfg: DictConfig, model: nn.Module, plan: FreezePlan, placement: Placement,
             image_size: int, dataset: Optional[Dataset] = None) -> tuple[Optional[Cut], str]:
    """Decide ``train.cache_features``: the cut to train from, or None and the reason (an error for ``on``)."""
    mode = cfg.train.cache_features
    if mode == "off":
        return None, "train.cache_features=off"
    random = random_augmentations(cfg.data.augment)
    cut, reason = candidate_cut(model, plan)
    if cut is not None and random:
        cut, reason = None, f"{', '.join(random)} draw random transforms, so frozen features differ every epoch"
    if cut is not None and cfg.train.get("progressive_resizing"):
        cut, reason = None, "train.progressive_resizing changes the input size between phases"
    if cut is not None and cfg.device.compile:
        cut, reason = None, "device.compile=true compiles the whole model's forward"
    if cut is not None and not splits_cleanly(model, cut, placement, image_size, dataset):
        where = "before the head" if cut.kind == "head" else f"after {cut.at}"
        cut, reason = None, f"{type(model).__name__}'s forward does not split cleanly {where}"
    if cut is None and mode == "on":
        raise ConfigError(f"train.cache_features=on but {reason}; use train.cache_features=auto or off")
    return cut, reason


class FeatureDataset(Dataset):
    """Cached prefix outputs with their labels; ``__getitems__`` slices whole batches at once."""

    def __init__(self, features: Any, labels: np.ndarray) -> None:
        self.features = features  # a tensor in memory, or a read-only np.memmap on disk
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def _rows(self, index: Any) -> torch.Tensor:
        if isinstance(self.features, torch.Tensor):
            return self.features[index]
        return torch.from_numpy(np.ascontiguousarray(self.features[index]))

    def __getitem__(self, index: int):
        return self._rows(index), int(self.labels[index])

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self._rows(index.numpy() if not isinstance(self.features, torch.Tensor) else index), self.labels[index]


def already_batched(batch: Any) -> Any:
    return batch


@dataclass
class FeatureCache:
    """The cut and the loaders of cached features that replace the image loaders while fitting."""

    cut: Cut
    train: DataLoader
    val: DataLoader
    info: dict = field(default_factory=dict)


def _feature_key(model: nn.Module, cut: Cut, dataset: ImageDataset, placement: Placement, model_name: str) -> str:
    frozen_state = [(k, v) for k, v in model.state_dict().items()
                    if not any(k.startswith(m + ".") for m in cut.trainable)]
    return digest({"model": model_name, "cut": [cut.kind, cut.at], "frozen": tensors_digest(frozen_state),
                   "transform": repr(dataset.transform),
                   "images": dataset.digest() if hasattr(dataset, "digest") else images_digest(dataset.images),
                   "placement": [placement.device.type, placement.channels_last, placement.amp],
                   "versions": [torch.__version__, torchvision.__version__]})


def _write_features(model: nn.Module, cut: Cut, dataset: ImageDataset, placement: Placement, path: Path) -> None:
    """Run the prefix over ``dataset`` in order, streaming into a .npy file (constant memory)."""
    model.eval()
    store = None
    with atomic_path(path) as tmp:
        start = 0
        for images, _labels in make_loader(dataset, CHUNK, False, 0, collate=getattr(dataset, "collate", None)):
            with placement.autocast():
                out = prefix_output(model, cut, placement.images(images)).float().cpu().contiguous()
            if store is None:
                store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                  shape=(len(dataset), *out.shape[1:]))
            store[start:start + len(out)] = out.numpy()
            start += len(out)
        store.flush()
        del store


def _intact_features(path: Path, rows: int) -> Optional[np.ndarray]:
    """The sealed entry at ``path`` memory-mapped, or None (removed with a warning) when it is missing,
    corrupt, or not ``rows`` float32 rows (an entry resealed by hand: never trusted, never unpickled)."""
    if not is_intact(path, "feature cache"):
        return None
    try:
        stored = np.load(path, mmap_mode="r")  # allow_pickle stays False: object arrays are refused
    except ValueError as exc:
        stored, why = None, str(exc)
    else:
        why = f"it holds {stored.dtype} {stored.shape}, not {rows} float32 rows"
        if stored.dtype == np.float32 and stored.ndim >= 2 and stored.shape[0] == rows:
            return stored
    log.warning("Ignoring feature cache %s: %s; rebuilding it", path, why)
    del stored
    remove_entry(path)
    return None


def cached_features(cfg: DictConfig, model: nn.Module, cut: Cut, dataset: ImageDataset, placement: Placement,
                    split: str) -> tuple[Any, dict]:
    """The prefix outputs of ``dataset`` (computed once per key), in memory when they fit."""
    name = model_id(cfg.model.name, cfg.model.library)
    key = _feature_key(model, cut, dataset, placement, name)
    path = cache_root(cfg) / "features" / f"{name.replace('/', '_')}-{split}-{key}.npy"
    started = time.perf_counter()
    with locked(path.with_suffix(".lock")):
        remove_stale_temp_files(path.parent)
        stored = _intact_features(path, len(dataset))
        status = "hit" if stored is not None else "miss"
        if stored is None:
            _write_features(model, cut, dataset, placement, path)
            seal(path)
            stored = np.load(path, mmap_mode="r")
    in_memory = stored.nbytes <= cfg.train.cache_features_memory_mb * 2**20
    features: Any = torch.from_numpy(np.array(stored)) if in_memory else stored
    info = {"status": status, "storage": "memory" if in_memory else "disk", "mb": round(stored.nbytes / 2**20, 1),
            "seconds": round(time.perf_counter() - started, 2), "file": str(path)}
    log.info("Feature cache %s for %d %s samples (%s, %.1f MB, %.1f s): %s", status, len(dataset), split,
             info["storage"], info["mb"], info["seconds"], path.name)
    return features, info


def build_feature_cache(cfg: DictConfig, model: nn.Module, plan: FreezePlan, placement: Placement, image_size: int,
                        train: ImageDataset, val: ImageDataset, seed: int) -> tuple[Optional[FeatureCache], dict]:
    """The feature loaders for this run, or None (and why) when training must see images."""
    cut, reason = plan_cut(cfg, model, plan, placement, image_size, train)
    if cut is None:
        log.info("Feature cache off: %s", reason)
        return None, {"mode": "off", "reason": reason}
    was_training = model.training
    # Iterating a loader draws a seed from the global RNG: restore it, so the run's random stream
    # (dropout in the suffix) is the one it would be without the cache.
    with torch.random.fork_rng(devices=[]):
        train_features, train_info = cached_features(cfg, model, cut, train, placement, "train")
        val_features, val_info = cached_features(cfg, model, cut, val, placement, "val")
    model.train(was_training)
    cache = FeatureCache(
        cut,
        # The same seed, batch size and drop_last as the image loader: the same batches in the same order.
        train=make_loader(FeatureDataset(train_features, train.images.labels), cfg.train.batch_size, True, seed,
                          collate=already_batched),
        val=make_loader(FeatureDataset(val_features, val.images.labels), cfg.train.eval_batch_size, False, seed,
                        collate=already_batched))
    cache.info = {"mode": "on", "cut": f"{cut.kind}:{cut.at}", "train": train_info, "val": val_info}
    return cache, cache.info
