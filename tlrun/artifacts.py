"""Reading what runs wrote: ft_model.pt → a ready model with its classes and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import nn

from tlrun.data.transforms import ImageGeometry
from tlrun.checkpoint import load_file
from tlrun.errors import CheckpointError, WeightsError
from tlrun.paths import run_model_file
from tlrun.models import text as text_model
from tlrun.models.factory import build_model
from tlrun.models.text import TextInput
from tlrun.pipelines.common import MODEL_FILE_FORMAT


@dataclass
class LoadedModel:
    model: nn.Module
    classes: list[str]
    geometry: "ImageGeometry | TextInput"
    model_name: str
    config: dict


def load_run_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Rebuild a trained model from a run folder or its ft_model.pt (in eval mode)."""
    file = run_model_file(path)
    try:
        saved = load_file(file, "a tlrun model file")
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FILE_FORMAT:
        raise WeightsError(f"{file} is not a tlrun model file ({MODEL_FILE_FORMAT})")
    if isinstance(saved.get("text"), dict):  # a text model: rebuilt from the config and tokenizer it holds
        model, geometry = text_model.rebuild(saved["text"])
    else:
        model = build_model(saved["model_name"], saved["num_classes"], weights=None).model
        geometry = ImageGeometry(**saved["preprocess"])
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    return LoadedModel(model, list(saved["classes"]), geometry, saved["model_name"], saved.get("config", {}))
