"""Build any registered classifier with pretrained weights and a new head for the run's classes."""

from __future__ import annotations

import difflib
import logging
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from tlrun.errors import ConfigError, WeightsError
from tlrun.models import timm_backbones
from tlrun.models import weights as weights_io
from tlrun.models.catalog import TORCHVISION_CLASSIFIERS
from tlrun.registry import Registry

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """What the weights expect: the run's transforms follow this unless data.* overrides it."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"


@dataclass
class ModelSpec:
    """How one architecture is built: constructor, and (optionally) its pretrained file."""

    build: Callable[..., nn.Module]
    weights_file: Optional[str] = None  # name of the pretrained file, for offline lookup
    preprocess: Preprocess = field(default_factory=Preprocess)


# tlrun's own architectures; torchvision classifiers are handled generically below.
MODELS: Registry[ModelSpec] = Registry("model", "model=")


@dataclass
class BuiltModel:
    model: nn.Module
    head_name: str  # dotted name of the classifier layer that was replaced
    preprocess: Preprocess
    weights: Optional[str]  # resolved weights name, or None for random init
    weights_source: str  # where they came from


def known_models() -> list[str]:
    _register_builtin()
    return sorted(set(TORCHVISION_CLASSIFIERS) | set(MODELS.names()))


def _register_builtin() -> None:
    # Importing registers tlrun's architectures (kept lazy so the CLI stays light).
    from tlrun.models import small  # noqa: F401
    from tlrun.models import zoo  # noqa: F401


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier layer: the last Linear or 1x1 Conv2d in registration order.

    One rule covers `fc` (ResNet, RegNet, GoogLeNet), `classifier[-1]` (VGG, MobileNet,
    EfficientNet, ConvNeXt, DenseNet), `heads.head` (ViT), `head` (Swin) and SqueezeNet's conv.
    """
    last: Optional[tuple[str, nn.Module]] = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            last = (name, module)
    if last is None:
        raise ConfigError(f"cannot find a Linear/1x1-conv classifier layer in {type(model).__name__}")
    return last


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the classifier layer for a freshly initialised one with ``num_classes`` outputs (timm
    models through their own ``reset_classifier``)."""
    timm_head = timm_backbones.reset_head(model, num_classes)
    if timm_head is not None:
        return timm_head
    name, old = find_head(model)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
    model.set_submodule(name, new)
    return name


def drop_auxiliary_heads(model: nn.Module) -> None:
    """Inception/GoogLeNet train extra heads on intermediate features; a transfer run does not."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for child_name, _ in list(model.named_children()):
            if child_name.lower().startswith("aux"):
                setattr(model, child_name, None)


def _torchvision_weights(name: str, weights: Optional[str]):
    import torchvision.models as tvm

    if weights is None:
        return None
    enum = tvm.get_model_weights(name)
    members = [m.name for m in enum]
    if weights == "DEFAULT":
        return enum.DEFAULT
    if weights not in members:
        raise ConfigError(f"unknown model.weights '{weights}' for {name}; choose DEFAULT, "
                          f"{', '.join(members)} or null")
    return enum[weights]


def _preprocess_of(tv_weights) -> Preprocess:
    transform = tv_weights.transforms()
    return Preprocess(crop_size=int(transform.crop_size[0]), resize_size=int(transform.resize_size[0]),
                      mean=tuple(transform.mean), std=tuple(transform.std),
                      interpolation=transform.interpolation.value)


def _build_torchvision(name: str, weights_name: Optional[str], weights_path: Optional[str]) -> BuiltModel:
    import torchvision.models as tvm

    tv_weights = _torchvision_weights(name, weights_name)
    preprocess = _preprocess_of(tv_weights) if tv_weights is not None else Preprocess()
    if weights_path:
        model = tvm.get_model(name, weights=None)
        load_into(model, weights_io.load_state_dict_file(Path(weights_path)), weights_path)
        return BuiltModel(model, "", preprocess, tv_weights.name if tv_weights else None, "weights_path")
    if tv_weights is None:
        return BuiltModel(tvm.get_model(name, weights=None), "", preprocess, None, "random init")
    file_name = Path(tv_weights.url).name
    local = weights_io.find_local(file_name)
    if local is not None:
        weights_io.verify_hash(local.path)
        with weights_io.hub_dir_serving(local):
            model = tvm.get_model(name, weights=tv_weights)
        return BuiltModel(model, "", preprocess, tv_weights.name, local.source)
    try:
        log.info("Downloading %s weights %s", name, file_name)
        model = tvm.get_model(name, weights=tv_weights)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0][:100] or type(exc).__name__
        raise WeightsError(weights_io.missing_weights_message(
            name, file_name, f"not on this machine and the download failed: {reason}")) from exc
    return BuiltModel(model, "", preprocess, tv_weights.name, "download")


def _build_registered(name: str, spec: ModelSpec, weights_name: Optional[str],
                      weights_path: Optional[str]) -> BuiltModel:
    model = spec.build()
    if weights_path:
        load_into(model, weights_io.load_state_dict_file(Path(weights_path)), weights_path)
        return BuiltModel(model, "", spec.preprocess, weights_name, "weights_path")
    if weights_name is None:
        return BuiltModel(model, "", spec.preprocess, None, "random init")
    if spec.weights_file is None:
        raise ConfigError(f"{name} has no pretrained weights; set model.weights=null "
                          "(or model.weights_path=<file>)")
    if weights_name not in ("DEFAULT", "IMAGENET1K_V1"):
        raise ConfigError(f"unknown model.weights '{weights_name}' for {name}; choose DEFAULT or null")
    local = weights_io.find_local(spec.weights_file)
    if local is None:
        raise WeightsError(weights_io.missing_weights_message(
            name, spec.weights_file, "no download source is known for it"))
    load_into(model, weights_io.load_state_dict_file(local.path), str(local.path))
    return BuiltModel(model, "", spec.preprocess, "DEFAULT", local.source)


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load, except that a classifier of another class count is skipped (it is replaced)."""
    head_name, _ = find_head(model)
    own = model.state_dict()
    skipped = [k for k, v in state_dict.items()
               if k.startswith(head_name + ".") and k in own and own[k].shape != v.shape]
    filtered = {k: v for k, v in state_dict.items() if k not in skipped}
    result = model.load_state_dict(filtered, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise WeightsError(f"weights in {origin} do not fit {type(model).__name__}: "
                           f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                           f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}); "
                           "check model= matches the file")


def build_source_model(name: str, weights: Optional[str] = "DEFAULT",
                       weights_path: Optional[str] = None) -> BuiltModel:
    """Build ``name`` with resolved pretrained weights and its own (source, e.g. ImageNet) head."""
    _register_builtin()
    if timm_backbones.is_timm(name):
        model, source = timm_backbones.create(name[len(timm_backbones.PREFIX):], weights, weights_path)
        pretrained = None if source == "random init" else (weights or "DEFAULT")
        built = BuiltModel(model, "", Preprocess(**timm_backbones.preprocess_of(model)), pretrained, source)
    elif name in MODELS:
        built = _build_registered(name, MODELS.get(name), weights, weights_path)
    elif name in TORCHVISION_CLASSIFIERS:
        built = _build_torchvision(name, weights, weights_path)
    else:
        close = difflib.get_close_matches(name, known_models(), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"unknown model '{name}': {hint}use a torchvision classifier name "
                          "(resnet18, efficientnet_b0, vit_b_16, ...), efficientnet_lite0, lenet, small_resnet, "
                          "or a timm model (model=timm model.name=<name>)")
    drop_auxiliary_heads(built.model)
    built.head_name = timm_backbones.head_name(built.model) or find_head(built.model)[0]
    return built


def build_model(name: str, num_classes: int, weights: Optional[str] = "DEFAULT",
                weights_path: Optional[str] = None, num_layers: Optional[int] = None,
                pooling: str = "auto") -> BuiltModel:
    """Build ``name`` with resolved pretrained weights and a new ``num_classes`` head (a text model's
    ``num_layers``: how many of its encoder layers to keep; ``pooling``: what its head reads)."""
    from tlrun.models import text

    if text.is_text_model(name):
        if weights_path:
            raise ConfigError("model.weights_path is for vision models; give a text model's folder as model.name")
        return text.build_text_model(name[len(text.PREFIX):], num_classes, weights, num_layers, pooling)
    if num_layers:
        raise ConfigError(f"model.num_layers is for text models (model=minilm, model=hf); {name} does not take it")
    built = build_source_model(name, weights, weights_path)
    built.head_name = replace_head(built.model, num_classes)
    log.info("Model %s: weights %s (%s), head %s -> %d classes", name, built.weights or "none",
             built.weights_source, built.head_name, num_classes)
    return built
