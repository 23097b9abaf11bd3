"""Image preprocessing and augmentation: a run's input geometry, per-image transforms, batch mixing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode, v2

from tlrun.models.factory import Preprocess


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
