"""Test-time augmentation: the views of one image whose softmax outputs are averaged.

Every view goes through the run's own evaluation preprocessing (size, interpolation, mean, std), so
``none`` is exactly the transform the run was evaluated with.

- ``none``: the evaluation view (resize, centre crop).
- ``flip``: that view and its horizontal mirror.
- ``flip+crops``: ``flip`` plus the four corner crops and their mirrors (10 views, TenCrop style). The
  corners are cut from the image resized to the run's resize size, or to 8/7 of the crop size when the
  run resizes straight to the crop (then the corners would equal the centre).
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import InterpolationMode, v2

from tlrun.data.transforms import ImageGeometry, build_transform

TTA_MODES = ("none", "flip", "flip+crops")


def corner_resize(geometry: ImageGeometry) -> int:
    if geometry.resize_size > geometry.crop_size:
        return geometry.resize_size
    return round(geometry.crop_size * 8 / 7)


def tta_transform(geometry: ImageGeometry, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 C×H×W image → V×C×H×W normalised views for ``mode``."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose {', '.join(TTA_MODES)}")
    centre = build_transform(geometry, None, train=False)
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(geometry.mean), list(geometry.std))])
    resize = v2.Resize(corner_resize(geometry), interpolation=InterpolationMode(geometry.interpolation),
                       antialias=True)

    def views(image: torch.Tensor) -> torch.Tensor:
        first = centre(image)
        out = [first]
        if mode != "none":
            out.append(first.flip(-1))
        if mode == "flip+crops":
            big = resize(image)
            size = geometry.crop_size
            height, width = big.shape[-2:]
            for top, left in ((0, 0), (0, width - size), (height - size, 0), (height - size, width - size)):
                crop = normalise(big[..., top:top + size, left:left + size])
                out += [crop, crop.flip(-1)]
        return torch.stack(out)

    return views
