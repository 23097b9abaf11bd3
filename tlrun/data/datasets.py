"""Decoding image files and serving them as a Dataset, streamed from the files or from a store
decoded once into memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from tlrun.data.sources import ImageSet
from tlrun.data.transforms import ImageGeometry
from tlrun.errors import DataError

log = logging.getLogger(__name__)


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
