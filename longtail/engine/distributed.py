"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m longtail train RECIPE ...`` starts N processes; each reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, joins the process group (NCCL
on GPUs, Gloo on the CPU), trains on its own shard of every epoch's sampler draw (all ranks draw
the same indices from (seed, epoch), then take ``draw[rank::world_size]``) and averages gradients.
``data.batch_size`` stays the *global* batch: each rank takes ``batch_size // world_size``.
Rank 0 alone writes the run folder; every rank evaluates (the metrics are identical).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """The process's place in a ``torchrun`` job (a single process without one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group once; return this rank's device."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise ConfigError(f"data.batch_size {batch_size} (the global batch) must be divisible by the "
                          f"{info.world_size} processes of this torchrun job")
    return batch_size // info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All-reduce average of a tensor (identity without a process group)."""
    if not (info.enabled and dist.is_initialized()):
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not (info.enabled and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
