"""The one way tlrun reads a network's intermediate features: a forward hook on a named module.

``FeatureTap(model, head_name)`` keeps what the classifier head reads (the pooled penultimate features),
``FeatureTap(model, "features.13", side="output")`` what a module produces. With ``stop=True`` the
forward pass ends at that module (the feature cache needs a frozen prefix's output, not the logits).
Used by domain adaptation (aligned features), tlrun-rank (LogME/LEEP features), the feature cache
(frozen-prefix outputs) and meta-distillation (the teacher's embedding).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from tlrun.errors import ConfigError


class _StopForward(Exception):
    """Raised by a stopping tap once it has its tensor: the rest of the forward is not needed."""


class FeatureTap:
    """Keeps the tensor a module of ``model`` reads (``side="input"``) or returns (``"output"``) on each
    forward pass, as ``features`` (flattened to (N, D) unless ``flatten=False``). With ``clone=True`` it
    keeps a copy (still in the autograd graph): a later in-place op of the forward, e.g. ReLU(inplace=True)
    on a BatchNorm's output, would otherwise change the kept tensor and break the backward pass of a loss
    on it. A context manager: leaving it removes the hook."""

    def __init__(self, model: nn.Module, module_name: str, side: str = "input", flatten: bool = True,
                 stop: bool = False, key: str = "module", clone: bool = False) -> None:
        names = [name for name, _ in model.named_modules() if name]
        if module_name not in names:
            raise ConfigError(f"{key}={module_name} is not a module of the model; choose one of: "
                              f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
        self.model, self.flatten, self.stop, self.clone = model, flatten, stop, clone
        self.features: Optional[torch.Tensor] = None
        module = model.get_submodule(module_name)
        if side == "input":
            self._hook = module.register_forward_pre_hook(lambda _m, args: self._keep(args[0]))
        else:
            self._hook = module.register_forward_hook(lambda _m, _args, output: self._keep(output))

    def _keep(self, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError("the tapped module does not read or produce one tensor")
        if self.clone:
            tensor = tensor.clone()
        self.features = tensor.flatten(1) if self.flatten else tensor
        if self.stop:
            raise _StopForward

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model on ``inputs`` and return the tapped features (only as far as the tap with stop)."""
        self.features = None
        try:
            self.model(inputs)
        except _StopForward:
            pass
        if self.features is None:
            raise ValueError("the tapped module did not run in the forward pass")
        return self.features

    def remove(self) -> None:
        self._hook.remove()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
