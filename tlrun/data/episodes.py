"""Few-shot episodes: N classes, K support and Q query images each, labels 0..N-1 in random order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from tlrun.data.datasets import ImageDataset
from tlrun.errors import DataError


@dataclass
class Episode:
    support_x: torch.Tensor
    support_y: torch.Tensor  # episode labels 0..n_way-1
    query_x: torch.Tensor
    query_y: torch.Tensor
    support_index: torch.Tensor  # positions in the sampler's dataset (to look up cached features)
    query_index: torch.Tensor
    classes: list[int]  # the dataset label behind each episode label


class EpisodeSampler:
    """Draws episodes from ``dataset`` restricted to ``class_ids`` (dataset labels).

    Query images per class are capped by what a class has left after its K support images, so small
    held-out sets still give full-size support sets; a class with no image left over is an error.
    """

    def __init__(self, dataset: ImageDataset, class_ids: Sequence[int], n_way: int, k_shot: int, n_query: int,
                 seed: int, what: str = "episodes") -> None:
        labels = np.asarray(dataset.images.labels)
        self.dataset, self.n_way, self.k_shot = dataset, n_way, k_shot
        self.members = {int(c): np.flatnonzero(labels == c) for c in class_ids}
        if len(self.members) < n_way:
            raise DataError(f"{what} need {n_way} classes but only {len(self.members)} are available; "
                            f"lower distill.n_way or change distill.meta_test_classes")
        smallest = min(len(m) for m in self.members.values())
        if smallest <= k_shot:
            raise DataError(f"{what}: a class has only {smallest} images, too few for {k_shot}-shot support plus "
                            "a query; lower distill.k_shot / distill.eval_shots or use more images per class")
        self.n_query = min(n_query, smallest - k_shot)
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        classes = [int(c) for c in self.rng.choice(sorted(self.members), self.n_way, replace=False)]
        support, query = [], []
        for members in (self.members[c] for c in classes):
            picked = self.rng.choice(members, self.k_shot + self.n_query, replace=False)
            support.append(picked[:self.k_shot])
            query.append(picked[self.k_shot:])
        support_index, query_index = np.concatenate(support), np.concatenate(query)
        return Episode(
            support_x=self._images(support_index), support_y=torch.arange(self.n_way).repeat_interleave(self.k_shot),
            query_x=self._images(query_index), query_y=torch.arange(self.n_way).repeat_interleave(self.n_query),
            support_index=torch.as_tensor(support_index), query_index=torch.as_tensor(query_index), classes=classes)

    def _images(self, index: np.ndarray) -> torch.Tensor:
        return torch.stack([self.dataset[int(i)][0] for i in index])

    def batches(self, meta_batch: int) -> Iterator[list[Episode]]:
        """An endless stream of meta-batches (the engine takes steps_per_epoch of them per epoch)."""
        while True:
            yield [self.sample() for _ in range(meta_batch)]


class EpisodeStream:
    """Iterable view of ``EpisodeSampler.batches`` for the engine's train_loader slot."""

    def __init__(self, sampler: EpisodeSampler, meta_batch: int) -> None:
        self.sampler, self.meta_batch = sampler, meta_batch

    def __iter__(self) -> Iterator[list[Episode]]:
        return self.sampler.batches(self.meta_batch)
