"""Data-parallel training under ``torchrun`` (one process per GPU, or per CPU slot with gloo).

``torchrun --nproc_per_node=N -m tlrun ...`` starts N copies of the same run. Each rank trains on its
shard of every epoch (``DistributedSampler``). The engine wraps the pipeline's whole training step (an
``nn.Module`` holding the model and, e.g., DANN's discriminator) in PyTorch's
``DistributedDataParallel``: rank 0's weights and buffers are broadcast at the start, gradients are
all-reduced in buckets while the backward pass runs, buffers (BatchNorm statistics) follow rank 0 at each
forward, or are computed over every rank's batch with ``device.sync_batchnorm=true`` (CUDA). gloo on
CPU, nccl on CUDA. Rank 0 alone writes the run folder and prints progress; the others learn its folder
by broadcast.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from tlrun.errors import ConfigError

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_ALONE = False  # inside single_process(): this rank works on its own, no collectives


def _joined() -> bool:
    return not _ALONE and dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _joined() else 0


def world_size() -> int:
    return dist.get_world_size() if _joined() else 1


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Within the block this rank runs as if alone (world size 1: no DDP, no sharding, no collectives).
    For work one rank does for all under a file lock, e.g. a cached teacher stage: whichever rank takes
    the lock first trains it, the others then find it in the cache, and no rank waits in a collective."""
    global _ALONE
    previous, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = previous


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


def data_parallel(step: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """``step`` wrapped in DistributedDataParallel under torchrun (with SyncBatchNorm if asked); the step
    itself otherwise. The step's attribute ``find_unused_parameters`` (default False) is passed on for
    steps whose forward may leave a trainable parameter out."""
    if world_size() == 1:
        if sync_batchnorm:
            log.info("device.sync_batchnorm=true has no effect outside torchrun (one process)")
        return step
    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError("device.sync_batchnorm=true needs CUDA devices (SyncBatchNorm has no CPU kernels); "
                              "set device.sync_batchnorm=false or run on GPUs")
        nn.SyncBatchNorm.convert_sync_batchnorm(step)  # replaces the BatchNorm children in place
    return nn.parallel.DistributedDataParallel(
        step, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(getattr(step, "find_unused_parameters", False)))


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers on every rank. DDP broadcasts them before each forward, so after the last training
    step each rank still holds the BatchNorm statistics of its own last batch; this makes every rank hold
    the model rank 0 saves."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_in_sync(module: nn.Module) -> Optional[bool]:
    """Under torchrun: whether every rank holds exactly the weights of rank 0 (a diverged rank is
    logged); None outside torchrun."""
    if world_size() == 1:
        return None
    digests: list = [None] * world_size()
    dist.all_gather_object(digests, weights_digest(module))
    if len(set(digests)) > 1:
        log.warning("The ranks' weights differ at the end of training (digests %s): DDP did not keep them in "
                    "step", ", ".join(d[:12] for d in digests))
    return len(set(digests)) == 1


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
