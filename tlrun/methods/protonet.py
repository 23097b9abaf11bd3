"""Prototypical networks (Snell, Swersky & Zemel 2017) on fixed features.

A class's prototype is the mean of its support embeddings; a query is scored by its negative squared
distance to each prototype. Embeddings are L2-normalised first (pretrained features differ in scale
between backbones), so ``-scale · ‖f − c‖²`` is a cosine score; ``scale`` sets the softmax's sharpness,
which matters when these scores serve as a teacher's soft targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean normalised embedding of each class 0..n_way-1 → (n_way, dim)."""
    features = F.normalize(features, dim=1)
    return torch.stack([features[labels == k].mean(0) for k in range(n_way)])


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """−scale · squared distance between normalised embeddings and prototypes → (n, n_way)."""
    return -scale * torch.cdist(F.normalize(features, dim=1), prototypes).pow(2)


def prototype_head(prototypes: torch.Tensor, scale: float = 10.0) -> torch.nn.Linear:
    """A linear layer on normalised features that scores exactly like ``prototype_logits`` up to a
    per-query constant (−s‖f−c‖² = 2s·f·c − s‖c‖² − s‖f‖²): the Proto-MAML initialisation of a new head."""
    head = torch.nn.Linear(prototypes.shape[1], prototypes.shape[0])
    with torch.no_grad():
        head.weight.copy_(2 * scale * prototypes)
        head.bias.copy_(-scale * prototypes.pow(2).sum(1))
    return head
