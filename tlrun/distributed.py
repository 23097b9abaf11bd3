"""Data-parallel training under ``torchrun`` (one process per GPU, or per CPU slot with gloo).

``torchrun --nproc_per_node=N -m tlrun ...`` starts N copies of the same run. Each rank trains on its
shard of every epoch (``DistributedSampler``) and gradients are averaged across ranks after each
backward pass, so every rank takes the same optimizer step — the update DistributedDataParallel makes.
The all-reduce is done by the engine rather than by wrapping the model, so every pipeline's step
(DANN's feature hooks, MAML's functional calls) runs unchanged. Rank 0 alone writes the run folder
and prints progress; the others learn its folder by broadcast.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def init(device_type: str) -> Optional[torch.device]:
    """Join the process group torchrun describes; returns this rank's device (None: not distributed)."""
    if not launched_by_torchrun():
        return None
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device_type)


def broadcast_object(value: object) -> object:
    """Rank 0's value on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights and buffers (random heads differ per process otherwise)."""
    if world_size() == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Mean of each gradient over ranks (one flat all-reduce per dtype/device bucket)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def sum_over_ranks(*values: float) -> list[float]:
    """Totals of per-rank counters (loss sums, correct counts, samples) for epoch metrics."""
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
