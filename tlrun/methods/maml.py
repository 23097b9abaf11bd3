"""MAML (Finn, Abbeel & Levine 2017): adapt a functional copy of the model on a task's support set.

    θ'_i = θ'_{i-1} − α ∇_θ' L_support(f(·; θ'_{i-1}))        (inner loop, ``steps`` times)
    meta-loss = L_query(f(·; θ'))                                (outer loss, back-propagated to θ)

The copy is functional (``torch.func.functional_call`` with a dict of tensors), so the module's own
parameters stay θ and the outer gradient flows through every inner update: second order by default,
first-order MAML (``first_order=True``) treats the inner gradients as constants.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


def trainable_params(model: nn.Module) -> Params:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def forward_with(model: nn.Module, params: Params, inputs: torch.Tensor) -> torch.Tensor:
    """The model's output with ``params`` in place of its own (buffers and frozen weights unchanged)."""
    return functional_call(model, params, (inputs,))


def adapt(model: nn.Module, params: Params, support: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
          steps: int, lr: float, first_order: bool = False) -> tuple[Params, list[float]]:
    """``steps`` SGD steps of ``loss_fn(model(support))`` on a functional copy; returns the adapted
    parameters (still differentiable w.r.t. ``params`` unless first order) and the inner losses."""
    losses = []
    with torch.enable_grad():  # meta-test adaptation runs inside evaluation code too
        for _ in range(steps):
            loss = loss_fn(forward_with(model, params, support))
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order, allow_unused=True)
            params = {name: p if g is None else p - lr * (g.detach() if first_order else g)
                      for (name, p), g in zip(params.items(), grads)}
            losses.append(loss.item())
    return params, losses


def detached_copy(params: Params) -> Params:
    """Leaf copies that require grad: adaptation at meta-test time, with no graph back to the model."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
