"""From a dataset name to seeded splits, transforms and DataLoaders."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from torchvision.transforms import InterpolationMode, v2

from tlrun.data.sources import DataRequest, ImageSet, SourceData, default_cache_dir, load_source
from tlrun.errors import DataError
from tlrun.models.factory import Preprocess

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class ImageGeometry:
    """Final input size and normalisation of a run (weights' defaults, data.* overrides)."""

    crop_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @classmethod
    def resolve(cls, preprocess: Preprocess, data_cfg: DictConfig) -> "ImageGeometry":
        if data_cfg.image_size is not None:
            crop = int(data_cfg.image_size)
            resize = int(data_cfg.resize_size or crop)
        else:
            crop, resize = preprocess.crop_size, int(data_cfg.resize_size or preprocess.resize_size)
        return cls(crop, resize, tuple(data_cfg.mean or preprocess.mean), tuple(data_cfg.std or preprocess.std),
                   preprocess.interpolation)


@dataclass
class RunData:
    name: str
    classes: list[str]
    splits: dict[str, ImageSet]
    description: str

    def split_table(self) -> pd.DataFrame:
        rows = [(split, sample_id, int(label), self.classes[int(label)])
                for split in SPLITS for sample_id, label in zip(self.splits[split].ids, self.splits[split].labels)]
        return pd.DataFrame(rows, columns=["split", "sample", "label", "class"])


# --- splitting -----------------------------------------------------------------------------------

def _stratified(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, taken) with ``fraction`` of the samples taken, stratified when possible."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        kept, taken = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to appear in both parts
        log.warning("Some classes have too few images to stratify; splitting at random")
        try:
            kept, taken = train_test_split(index, test_size=fraction, random_state=seed)
        except ValueError:  # too few images for this fraction at all
            raise DataError(f"{len(labels)} images are too few to split off a {fraction:.0%} part (data.split); "
                            "add images, or give the data train/ val/ test/ folders") from None
    return np.sort(kept), np.sort(taken)


def cap_per_class(images: ImageSet, max_per_class: Optional[int], seed: int) -> ImageSet:
    if max_per_class is None:
        return images
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(images.labels):
        members = np.flatnonzero(images.labels == label)
        keep.extend(rng.permutation(members)[:max_per_class])
    return images.subset(sorted(keep))


def select_classes(source: SourceData, wanted: Optional[list]) -> SourceData:
    """Keep only the classes named in ``wanted`` (in the source's order), relabelled 0..k-1."""
    if not wanted:
        return source
    names = [str(name) for name in wanted]
    unknown = [name for name in names if name not in source.classes]
    if unknown:
        raise DataError(f"data.classes names {', '.join(unknown)}, which the data does not have; "
                        f"choose among {', '.join(source.classes)}")
    keep = [i for i, name in enumerate(source.classes) if name in names]
    relabel = np.full(len(source.classes), -1)
    relabel[keep] = np.arange(len(keep))
    parts = {}
    for key, images in source.parts.items():
        index = np.flatnonzero(np.isin(images.labels, keep))
        subset = images.subset(index)
        subset.labels = relabel[subset.labels]
        parts[key] = subset
    return SourceData([source.classes[i] for i in keep], parts, source.description)


def make_splits(source: SourceData, fractions: list[float], seed: int,
                max_per_class: Optional[int] = None) -> dict[str, ImageSet]:
    """train/val/test, fixed by ``seed``; fixed parts of the source are kept as they are."""
    parts = {k: cap_per_class(v, max_per_class, seed) for k, v in source.parts.items()}
    f_train, f_val, f_test = fractions
    if "all" in parts:
        pool = parts["all"]
        rest, test = _stratified(pool.labels, f_test, seed)
        train, val = _stratified(pool.labels[rest], f_val / (f_train + f_val), seed)
        return {"train": pool.subset(rest[train]), "val": pool.subset(rest[val]), "test": pool.subset(test)}
    splits = dict(parts)
    for missing, fraction in (("test", f_test), ("val", f_val)):
        if missing not in splits:
            train = splits["train"]
            kept, taken = _stratified(train.labels, fraction / (f_train + fraction), seed)
            log.info("No %s part in the data: %d training images are held out as %s", missing, len(taken), missing)
            splits["train"], splits[missing] = train.subset(kept), train.subset(taken)
    return splits


# --- transforms ----------------------------------------------------------------------------------

def build_transform(geometry: ImageGeometry, augment: Optional[DictConfig], train: bool) -> v2.Compose:
    """uint8 C×H×W tensor → normalised float tensor. Augmentations only when ``train``."""
    interpolation = InterpolationMode(geometry.interpolation)
    steps: list[Callable] = []
    if train and augment is not None and augment.random_resized_crop:
        steps.append(v2.RandomResizedCrop(geometry.crop_size, scale=(augment.crop_scale_min, 1.0),
                                          interpolation=interpolation, antialias=True))
    else:
        steps += [v2.Resize(geometry.resize_size, interpolation=interpolation, antialias=True),
                  v2.CenterCrop(geometry.crop_size)]
    if train and augment is not None:
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.vflip:
            steps.append(v2.RandomVerticalFlip())
        if augment.rotation > 0:
            steps.append(v2.RandomRotation(augment.rotation))
        if augment.color_jitter > 0:
            strength = augment.color_jitter
            steps.append(v2.ColorJitter(strength, strength, strength, min(0.5, strength / 4)))
        if augment.auto == "trivial":
            steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
        elif augment.auto == "rand":
            steps.append(v2.RandAugment(interpolation=interpolation))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geometry.mean), list(geometry.std))]
    if train and augment is not None and augment.random_erasing > 0:
        steps.append(v2.RandomErasing(p=augment.random_erasing))
    return v2.Compose(steps)


def is_deterministic(augment: DictConfig) -> bool:
    """True when training images go through no random transform (cacheable features/logits)."""
    from tlrun.config import random_augmentations

    return not random_augmentations(augment)


def decode_image(path: Path) -> torch.Tensor:
    """A file as a uint8 3×H×W tensor: 16-bit grey scaled to 8 bits, not clipped (``imagefolder.to_rgb8``).
    A decode failure, or a mode with no faithful 8-bit form, is one DataError naming the file."""
    from PIL import Image

    from tlrun.data.imagefolder import to_rgb8

    try:
        with Image.open(path) as image:
            return v2.functional.pil_to_tensor(to_rgb8(image, path))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot decode image {path} ({type(exc).__name__}); fix or delete it, "
                        "or set data.bad_images=skip") from exc


class ImageDataset(Dataset):
    """Items are (normalised image tensor, label)."""

    def __init__(self, images: ImageSet, transform: Callable) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, index: int) -> torch.Tensor:
        if self.images.pixels is not None:
            image = self.images.pixels[index]
        else:
            image = decode_image(self.images.paths[index])
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image

    def __getitem__(self, index: int):
        return self.transform(self.raw(index)), int(self.images.labels[index])


class _StoreItems(Dataset):
    """Files decoded, resized (shorter side) and centre-cropped to ``size``×``size`` uint8 tensors."""

    def __init__(self, paths: list[Path], size: int, interpolation: str) -> None:
        self.paths = paths
        self.resize = v2.Compose([v2.Resize(size, interpolation=InterpolationMode(interpolation), antialias=True),
                                  v2.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = decode_image(self.paths[index])
        return self.resize(image.expand(3, -1, -1) if image.shape[0] == 1 else image)


def store_size(geometry: ImageGeometry) -> int:
    """Side of the stored square: what the eval transform resizes to (so it becomes a centre crop)."""
    return max(geometry.resize_size, geometry.crop_size)


def store_mb(images: ImageSet, geometry: ImageGeometry) -> float:
    return len(images) * 3 * store_size(geometry) ** 2 / 2**20


def in_memory(images: ImageSet, geometry: ImageGeometry, max_mb: float, num_workers: int = 0,
              split: str = "") -> ImageSet:
    """``images`` with its files decoded once into a uint8 N×3×S×S store (S = ``store_size``), when the
    store fits in ``max_mb``; else unchanged (files decoded on every access).

    Each image is resized to S on its shorter side and centre-cropped to a square, so the eval
    transform (resize to S, centre crop) gives the same pixels as from the file, and training
    transforms (random crops, flips, colour...) run on the stored tensors: no decode per epoch."""
    if images.pixels is not None or not images.paths:
        return images
    size, mb = store_size(geometry), store_mb(images, geometry)
    if mb > max_mb:
        log.info("Data path %s: streaming %d files, decoded every epoch (a %.0f MB store > "
                 "data.in_memory_max_mb=%d)", split, len(images), mb, max_mb)
        return images
    started = time.perf_counter()
    # A private generator: building the store must not shift the run's random stream.
    loader = DataLoader(_StoreItems(list(images.paths), size, geometry.interpolation), batch_size=64,
                        num_workers=num_workers, generator=torch.Generator())
    pixels = torch.cat(list(loader)) if len(images) else torch.empty(0, 3, size, size, dtype=torch.uint8)
    log.info("Data path %s: %d files decoded once into memory (%dx%d uint8, %.0f MB, %.1f s)", split, len(images),
             size, size, mb, time.perf_counter() - started)
    return ImageSet(labels=images.labels, pixels=pixels, paths=images.paths, ids=list(images.ids))


def batch_mixer(augment: DictConfig, num_classes: int) -> Optional[Callable]:
    """MixUp/CutMix on whole batches (labels become class probabilities). Fields after (image, label),
    such as the training-image index of distillation, pass through unchanged."""
    mixers = []
    if augment.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=augment.mixup_alpha, num_classes=num_classes))
    if augment.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=augment.cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    mixer = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
    def mix(batch: list) -> tuple:
        images, labels, *rest = default_collate(batch)
        return (*mixer(images, labels), *rest)

    return mix


def _load_source(data_cfg: DictConfig, name: str, root: Optional[str]) -> SourceData:
    """Dataset ``name`` with data.classes applied. Every dataset of a run (data, data.target, transfer
    images) comes through here, so here a classifier's need for 2 classes with images is enforced."""
    request = DataRequest(name=name, root=root,
                          cache_dir=Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir(),
                          bad_images=data_cfg.bad_images)
    loaded = load_source(request)
    wanted = data_cfg.get("classes")
    source = select_classes(loaded, wanted)
    # Classes that have images (a class whose files were all skipped as unreadable does not count).
    labels = np.unique(np.concatenate([part.labels for part in source.parts.values()]))
    present = [source.classes[i] for i in labels]
    if len(present) >= 2:
        return source
    found = f"{len(present)} class ({', '.join(present)})" if present else "no class"
    if wanted:
        choices = ", ".join(loaded.classes[:10]) + (", ..." if len(loaded.classes) > 10 else "")
        raise DataError(f"data.classes=[{','.join(str(c) for c in wanted)}] keeps images of only {found} of {name}; "
                        f"a classifier needs at least 2 classes: list 2 or more of {choices}, or remove data.classes")
    raise DataError(f"{name} ({source.description}) has images of only {found}; a classifier needs at least "
                    "2 classes: use data with images of 2 or more classes")


def load_run_data(data_cfg: DictConfig, seed: int, name: Optional[str] = None,
                  root: Optional[str] = None) -> RunData:
    """Load dataset ``name`` (default: data.name from data.root) and split it for this run."""
    if name is None:
        name, root = data_cfg.name, data_cfg.root
    source = _load_source(data_cfg, name, root)
    splits = make_splits(source, list(data_cfg.split), seed, data_cfg.max_per_class)
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise DataError(f"the {split} split of {name} is empty; use more images or change data.split")
    log.info("Data %s: %s; %d classes; train/val/test = %d/%d/%d", name, source.description,
             len(source.classes), *(len(splits[s]) for s in SPLITS))
    return RunData(name, source.classes, splits, source.description)


def left_out_images(data_cfg: DictConfig, seed: int, run: RunData, count: int) -> ImageSet:
    """Up to ``count`` images of the run's dataset that none of its train/val/test splits holds (those
    data.max_per_class left out), drawn at random with ``seed``, their labels removed (set to -1): an
    unlabelled transfer set. Only the pool that train was drawn from is used (never a fixed test part)."""
    source = _load_source(data_cfg, data_cfg.name, data_cfg.root)
    pool_name = "all" if "all" in source.parts else "train"
    pool = source.parts[pool_name]
    # The splits drawn from this pool; a fixed val/test part of the dataset numbers its images separately.
    drawn = [split for split in SPLITS if pool_name == "all" or split == "train" or split not in source.parts]
    used = set().union(*(run.splits[split].ids for split in drawn))
    free = [i for i, sample_id in enumerate(pool.ids) if sample_id not in used]
    if not free:
        raise DataError(f"{run.name} has no images outside the run's train/val/test splits to use as unlabelled "
                        "transfer images; cap the splits with data.max_per_class=<n> or set distill.transfer_images=0")
    if len(free) < count:
        log.info("Transfer set: only %d images of %s are outside the run's splits (asked for %d)", len(free),
                 run.name, count)
    chosen = pool.subset(np.sort(np.random.default_rng(seed).permutation(free)[:count]))
    chosen.labels = np.full(len(chosen), -1, dtype=np.int64)  # unlabelled: nothing downstream can use them
    return chosen


class PairedBatches:
    """Yields (batch of ``source``, batch of ``target``) pairs for an epoch as long as the longer loader; the
    shorter one restarts when it runs out (never zip-truncated). Domain adaptation pairs source and target
    domains; distillation pairs labelled images with unlabelled transfer images."""

    def __init__(self, source: DataLoader, target: DataLoader) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        iterators = [iter(self.source), iter(self.target)]
        loaders = (self.source, self.target)
        for _ in range(len(self)):
            pair = []
            for k in range(2):
                try:
                    pair.append(next(iterators[k]))
                except StopIteration:
                    iterators[k] = iter(loaders[k])
                    pair.append(next(iterators[k]))
            yield tuple(pair)


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int, num_workers: int = 0,
                collate: Optional[Callable] = None, pin_memory: bool = False) -> DataLoader:
    from tlrun import distributed

    generator = torch.Generator().manual_seed(seed)
    sampler, shuffle, size = None, train, len(dataset)  # type: ignore[arg-type]
    if train and distributed.world_size() > 1:
        # Each rank trains on its own shard of every epoch (the engine calls set_epoch).
        world = distributed.world_size()
        if size < world:
            raise DataError(f"the training set has {size} images but torchrun started {world} processes; "
                            "lower --nproc_per_node or use more data")
        sampler = DistributedSampler(dataset, num_replicas=world, rank=distributed.rank(), shuffle=True, seed=seed)
        shuffle, size = False, len(sampler)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      generator=generator if train else None,
                      num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0,
                      # A last batch of one image breaks BatchNorm in training.
                      drop_last=train and size > batch_size)
