"""Data-parallel plumbing for the trainer: process group set-up from ``torchrun``'s environment.

    torchrun --nproc_per_node=2 -m subq.cli.main train --config configs/mqar-attention.yaml

With ``WORLD_SIZE > 1`` the trainer joins the default process group (``nccl`` on CUDA, ``gloo`` on
CPU, rendezvous through ``MASTER_ADDR``/``MASTER_PORT``), wraps the model in
``DistributedDataParallel`` and gives each rank a disjoint slice of every global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; ``world_size == 1`` outside ``torchrun``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process created the process group and tears it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str) -> DistInfo:
    """Join (or reuse) the default process group when ``WORLD_SIZE > 1``; else a single-process ``DistInfo``.

    ``device_type`` (``"cuda"`` or ``"cpu"``) picks the backend; on CUDA the current device becomes
    ``LOCAL_RANK``.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ and not dist.is_initialized():
            raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        owns = True
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), owns)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """Sum ``t`` over ranks in place (no-op on one process); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def close_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
