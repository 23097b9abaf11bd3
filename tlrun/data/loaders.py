"""DataLoaders: seeded shuffling, the distributed sampler, and paired batches of two loaders."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tlrun.errors import DataError


class PairedBatches:
    """Yields (batch of ``source``, batch of ``target``) pairs for an epoch as long as the longer loader; the
    shorter one restarts when it runs out (never zip-truncated). Domain adaptation pairs source and target
    domains; distillation pairs labelled images with unlabelled transfer images."""

    def __init__(self, source: DataLoader, target: DataLoader) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        iterators = [iter(self.source), iter(self.target)]
        loaders = (self.source, self.target)
        for _ in range(len(self)):
            pair = []
            for k in range(2):
                try:
                    pair.append(next(iterators[k]))
                except StopIteration:
                    iterators[k] = iter(loaders[k])
                    pair.append(next(iterators[k]))
            yield tuple(pair)


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int, num_workers: int = 0,
                collate: Optional[Callable] = None, pin_memory: bool = False) -> DataLoader:
    from tlrun import distributed

    generator = torch.Generator().manual_seed(seed)
    sampler, shuffle, size = None, train, len(dataset)  # type: ignore[arg-type]
    if train and distributed.world_size() > 1:
        # Each rank trains on its own shard of every epoch (the engine calls set_epoch).
        world = distributed.world_size()
        if size < world:
            raise DataError(f"the training set has {size} images but torchrun started {world} processes; "
                            "lower --nproc_per_node or use more data")
        sampler = DistributedSampler(dataset, num_replicas=world, rank=distributed.rank(), shuffle=True, seed=seed)
        shuffle, size = False, len(sampler)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      generator=generator if train else None,
                      num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0,
                      # A last batch of one image breaks BatchNorm in training.
                      drop_last=train and size > batch_size)
