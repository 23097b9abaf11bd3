"""Rank candidate backbones for a dataset before training: one forward pass of frozen features each.

For every candidate (a model name and its weights, ``null`` = random init) the labelled images go once
through the unchanged network; a hook keeps the classifier's input (the pooled features) and its output
(the source, e.g. ImageNet, logits). From those: LogME on the features, LEEP on the source softmax, and,
with a source domain, the multi-kernel MMD between source and target features (lower = closer domains).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from tlrun.config import DataConfig
from tlrun.data.datasets import ImageDataset
from tlrun.data.sources import ImageSet
from tlrun.data.splits import load_run_data
from tlrun.data.transforms import ImageGeometry, build_transform
from tlrun.engine import Placement
from tlrun.errors import ConfigError
from tlrun.features import FeatureTap
from tlrun.methods.domain_gap import feature_mmd
from tlrun.methods.transferability import leep, logme
from tlrun.models.catalog import MODEL_DEFAULTS
from tlrun.models.factory import build_source_model

log = logging.getLogger(__name__)

RANDOM_INIT = ("null", "none", "random")
SCORES = ("logme", "leep", "mmd")


@dataclass(frozen=True)
class Candidate:
    model: str
    weights: Optional[str]  # None = random init

    @property
    def label(self) -> str:
        return f"{self.model}:{self.weights or 'null'}"

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``name`` (the model's default weights), ``name:null`` (random init) or ``name:<weights>``."""
        name, _, weights = text.partition(":")
        if not name:
            raise ConfigError(f"empty model name in '{text}'; use e.g. mobilenet_v2 or mobilenet_v2:null")
        if not weights:
            return cls(name, MODEL_DEFAULTS.get(name, {}).get("weights", "DEFAULT"))
        return cls(name, None if weights.lower() in RANDOM_INIT else weights)


@dataclass
class Extracted:
    features: np.ndarray  # classifier input, (n, D)
    source_probabilities: np.ndarray  # softmax of the source head, (n, Z)
    seconds: float


def data_config(name: str, root: Optional[str], image_size: Optional[int], max_per_class: Optional[int],
                cache_dir: Optional[str] = None) -> DictConfig:
    """A data section with the schema's defaults (so splits match a tlrun run of the same seed)."""
    cfg = OmegaConf.structured(DataConfig)
    cfg.name, cfg.root, cfg.image_size, cfg.max_per_class, cfg.cache_dir = name, root, image_size, max_per_class, cache_dir
    return cfg


@torch.inference_mode()
def extract(model: nn.Module, head_name: str, images: ImageSet, geometry: ImageGeometry, placement: Placement,
            batch_size: int = 128) -> Extracted:
    """One pass of frozen features: the head's input and the softmax of its output."""
    kept: list[torch.Tensor] = []
    model.eval()
    loader = DataLoader(ImageDataset(images, build_transform(geometry, None, train=False)), batch_size=batch_size)
    probabilities = []
    started = time.perf_counter()
    with FeatureTap(model, head_name) as tap:
        for batch, _ in loader:
            logits = model(placement.images(batch)).float().flatten(1)
            kept.append(tap.features.float().cpu())
            probabilities.append(logits.softmax(dim=1).cpu())
    seconds = time.perf_counter() - started
    return Extracted(torch.cat(kept).numpy(), torch.cat(probabilities).numpy(), seconds)


def score_candidate(candidate: Candidate, target: ImageSet, data_cfg: DictConfig, placement: Placement,
                    source: Optional[ImageSet] = None, batch_size: int = 128) -> dict:
    built = build_source_model(candidate.model, candidate.weights)
    geometry = ImageGeometry.resolve(built.preprocess, data_cfg)
    placement.model(built.model)
    out = extract(built.model, built.head_name, target, geometry, placement, batch_size)
    labels = target.labels
    row = {"model": candidate.model, "weights": candidate.weights or "null (random init)",
           "logme": logme(out.features, labels), "leep": leep(out.source_probabilities, labels)}
    if source is not None:
        source_out = extract(built.model, built.head_name, source, geometry, placement, batch_size)
        row["mmd"] = feature_mmd(source_out.features, out.features)
    row.update({"feature_dim": out.features.shape[1], "images": len(labels), "image_size": geometry.crop_size,
                "extract_s": round(out.seconds, 2)})
    return row


def rank(candidates: list[Candidate], data_cfg: DictConfig, seed: int = 0, split: str = "train",
         source_cfg: Optional[DictConfig] = None, by: str = "logme", device: Optional[torch.device] = None,
         batch_size: int = 128) -> pd.DataFrame:
    """The ranked table: one row per candidate, best first by ``by`` (MMD: lowest first)."""
    if by not in SCORES:
        raise ConfigError(f"unknown score '{by}'; rank by one of {', '.join(SCORES)}")
    if by == "mmd" and source_cfg is None:
        raise ConfigError("ranking by mmd needs a source domain: --source <dataset or folder>")
    data = load_run_data(data_cfg, seed)
    target = _pick(data.splits, split)
    source = _pick(load_run_data(source_cfg, seed).splits, "train") if source_cfg is not None else None
    placement = Placement(device or torch.device("cpu"), channels_last=True)
    rows = []
    for candidate in candidates:
        torch.manual_seed(seed)  # random-init candidates: the same weights on every call
        log.info("Scoring %s on %d images", candidate.label, len(target))
        rows.append(score_candidate(candidate, target, data_cfg, placement, source, batch_size))
    table = pd.DataFrame(rows).sort_values(by, ascending=by == "mmd", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def _pick(splits: dict[str, ImageSet], split: str) -> ImageSet:
    if split == "all":
        parts = [splits[s] for s in ("train", "val", "test")]
        return ImageSet(np.concatenate([p.labels for p in parts]),
                        pixels=torch.cat([p.pixels for p in parts]) if parts[0].pixels is not None else None,
                        paths=sum((p.paths for p in parts), []) if parts[0].paths is not None else None,
                        ids=sum((p.ids for p in parts), []))
    if split not in splits:
        raise ConfigError(f"unknown split '{split}'; use train, val, test or all")
    return splits[split]


def kendall_tau(first: list[float], second: list[float]) -> float:
    """Kendall's τ-b between two score lists (rank agreement, −1 … 1)."""
    from scipy.stats import kendalltau

    return float(kendalltau(first, second)[0])
