"""timm backbones (``model=timm model.name=<timm name[.pretrained tag]>``, or ``model.name=timm/<name>``).

Everything model-specific comes from timm itself, so any of its ~1,300 architectures works as the
torchvision ones do:

- **weights**: ``timm.create_model(pretrained=True)`` (the Hugging Face Hub download and cache when
  online, the tag in the name picks them: ``convnext_tiny.fb_in22k``), or a local ``.safetensors`` /
  ``.pth`` through timm's own loader (``pretrained_cfg_overlay=dict(file=...)``: its key filters for
  original-format checkpoints apply, and ``.pth`` files load with ``weights_only=True``);
- **preprocessing**: ``timm.data.resolve_model_data_config`` (input size, crop fraction, mean/std,
  interpolation), overridable by the same ``data.*`` keys;
- **head**: ``reset_classifier(num_classes)``, the module named by ``pretrained_cfg["classifier"]``;
- **stages** for ``freeze=``: ``model.feature_info`` (see ``tlrun.freeze.split_stages``).
"""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path
from typing import Any, Optional

from torch import nn

from tlrun.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

PREFIX = "timm/"  # model ids of timm models: "timm/<name>" (model=timm adds it)


def is_timm(model_id: str) -> bool:
    return model_id.startswith(PREFIX)


def model_id(name: str, library: str) -> str:
    """The id that names a model everywhere (metrics, ft_model.pt, teachers): ``timm/<name>`` for timm,
    ``hf/<name>`` for Hugging Face text models."""
    if library == "hf":
        return name if name.startswith("hf/") else "hf/" + name
    return PREFIX + name if library == "timm" and not is_timm(name) else name


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs the timm package: pip install 'tlrun[timm]'") from None
    return timm


def _check_name(timm: Any, name: str) -> None:
    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"unknown timm model '{base}': {hint}timm.list_models() lists them")
    if tag and name not in timm.list_pretrained(f"{base}.*"):
        tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{base}.*")]
        raise ConfigError(f"timm has no pretrained tag '{tag}' for {base}; tags: {', '.join(tags) or 'none'}")


def _weights_error(name: str, reason: str) -> WeightsError:
    return WeightsError(f"pretrained timm weights for {name} not found ({reason}); fixes: connect to the internet once "
                        "(timm caches them under ~/.cache/huggingface, or $HF_HOME), "
                        "model.weights_path=/path/to/<weights>.safetensors|.pth, "
                        "model.weights=null to train from random init")


def _classes_in_file(path: Path, classifier: Optional[str]) -> Optional[int]:
    """Output count of the classifier stored in a weights file (None when it has none under that name)."""
    if not isinstance(classifier, str):
        return None
    key = f"{classifier}.weight"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return int(handle.get_slice(key).get_shape()[0]) if key in handle.keys() else None
    from timm.models import load_state_dict

    state = load_state_dict(str(path), weights_only=True)  # timm's unwrapping of state_dict/model keys
    return int(state[key].shape[0]) if key in state else None


def create(name: str, weights: Optional[str], weights_path: Optional[str]) -> tuple[nn.Module, str]:
    """The timm model ``name`` with its pretrained (source) head, and where its weights came from."""
    timm = import_timm()
    _check_name(timm, name)
    if weights not in (None, "DEFAULT"):
        raise ConfigError(f"model.weights={weights} with a timm model: timm picks weights by the name's tag "
                          f"(model.name={name.partition('.')[0]}.<tag>, timm.list_pretrained() lists them); "
                          "set model.weights=DEFAULT or null")
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsError(f"model.weights_path {path} does not exist; give a .safetensors or .pth file")
        classifier = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
        classifier = classifier.classifier if classifier is not None else None
        try:
            classes = _classes_in_file(path, classifier)
            overlay = {"file": str(path), **({"num_classes": classes} if classes else {})}
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                      **({"num_classes": classes} if classes else {}))
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            detail = " ".join(str(exc).split())[:200]  # torch names the missing/unexpected keys after line 1
            raise WeightsError(f"cannot load {path} into timm {name} ({type(exc).__name__}: {detail}); "
                               "check model.name matches the file") from exc
        return model, "weights_path"
    if weights is None:
        return timm.create_model(name, pretrained=False), "random init"
    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as exc:
        if "No pretrained weights" in str(exc):
            raise ConfigError(f"timm {name} has no pretrained weights; set model.weights=null or pick a tagged "
                              f"name from timm.list_pretrained('{name.partition('.')[0]}*')") from exc
        raise _weights_error(name, str(exc).splitlines()[0][:120]) from exc
    except OSError as exc:  # huggingface_hub's offline / not-found errors are OSError subclasses
        raise _weights_error(name, f"not in the local cache and the download failed: {type(exc).__name__}") from exc
    except Exception as exc:  # noqa: BLE001 - network stacks raise their own types (requests, httpx)
        if type(exc).__module__.split(".")[0] in ("requests", "httpx", "urllib3", "huggingface_hub"):
            raise _weights_error(name, f"the download failed: {type(exc).__name__}") from exc
        raise
    return model, "download"


def head_name(model: nn.Module) -> Optional[str]:
    """The classifier module timm's pretrained config names (None for models with several heads)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    return classifier if isinstance(classifier, str) else None


def reset_head(model: nn.Module, num_classes: int) -> Optional[str]:
    """timm's own head replacement; the head's module name, or None when timm cannot do it."""
    name = head_name(model)
    if name is None or not hasattr(model, "reset_classifier"):
        return None
    model.reset_classifier(num_classes)
    return name


def preprocess_of(model: nn.Module) -> dict:
    """Preprocess fields from timm's resolved data config (``resize = size / crop_pct``)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    size = int(config["input_size"][-1])
    interpolation = config.get("interpolation", "bilinear")
    return {"crop_size": size, "resize_size": int(math.floor(size / config.get("crop_pct", 0.875))),
            "mean": tuple(config["mean"]), "std": tuple(config["std"]),
            "interpolation": interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"}
