"""Distributed set-up for `torchrun` (env://): single process, multi-GPU and multi-node alike.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them we run as a single process.
The backend is NCCL on CUDA and gloo on CPU (the CPU path is what the tests exercise with 2 processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Initialise the default process group when launched by torchrun; no-op otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (for logging only; gradients are reduced by DDP)."""
    if not info.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank; `[obj]` without DDP. Used for per-rank RNG
    states, which a checkpoint stores so that each rank resumes its own stream."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, in place.

    DDP broadcasts buffers only at the start of a forward with grad enabled; after that forward each rank updates
    its BN running statistics with its own batch (CPU/gloo has no SyncBatchNorm), so ranks drift apart until the next
    training forward. Call this before evaluating with the bare module so all ranks evaluate the same model.
    """
    if not info.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
