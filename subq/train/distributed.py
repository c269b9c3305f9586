"""Data-parallel plumbing for the trainer: process group set-up from ``torchrun``'s environment, the
DDP / FSDP wrappers, and full (unsharded) state dicts for checkpoints.

    torchrun --nproc_per_node=2 -m subq.cli.main train --config configs/mqar-attention.yaml
    torchrun --nproc_per_node=2 -m subq.cli.main train --config configs/mqar-attention.yaml parallel=fsdp

Under ``torchrun`` (or with ``WORLD_SIZE > 1``) the trainer joins the default process group
(``nccl`` on CUDA, ``gloo`` on CPU, rendezvous through ``MASTER_ADDR``/``MASTER_PORT``), wraps the
model and gives each rank a disjoint slice of every global batch; ``--nproc_per_node=1`` runs the
same path on one device. ``parallel="ddp"`` (the default) keeps a full replica per rank
and all-reduces gradients (``DistributedDataParallel``); ``parallel="fsdp"`` shards parameters,
gradients and optimizer state over the ranks with PyTorch's ``fully_shard`` (FSDP2), one unit per
block plus the root (embedding, final norm, tied head), in the parameters' own dtype (autocast does
the bf16 compute, as in DDP). ``comm_dtype="bf16"`` halves the bytes the collectives move: DDP
all-reduces its gradient buckets in bf16 (a communication hook; each rank divides its bf16 copy by
the world size before the all-reduce), FSDP all-gathers bf16 parameters and reduce-scatters bf16 gradients
(``MixedPrecisionPolicy``); the optimizer still updates fp32 weights. Checkpoints hold full tensors
either way, so a run saved under one layout resumes under the other or on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

Parallel = Literal["ddp", "fsdp"]
CommDtype = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``joined`` when it is in a process group (under ``torchrun``,
    also with one rank), else a lone process with ``world_size == 1``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process created the process group and tears it down
    joined: bool = False

    @property
    def enabled(self) -> bool:
        """Whether the trainer runs the distributed path (process group, DDP/FSDP wrapper)."""
        return self.joined

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (``torch.distributed.run``) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def init_distributed(device_type: str) -> DistInfo:
    """Join (or reuse) the default process group when ``WORLD_SIZE > 1`` or under ``torchrun`` (even
    with ``--nproc_per_node=1``: the same DDP/FSDP and NCCL code path on one GPU); else a lone process.

    ``device_type`` (``"cuda"`` or ``"cpu"``) picks the backend; on CUDA the current device becomes
    ``LOCAL_RANK``.
    """
    world = env_world_size()
    if world <= 1 and not launched_by_torchrun():
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
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), owns, joined=True)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """Sum ``t`` over ranks in place (no-op on one process); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def close_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        # no rank tears its connections down while a peer still finishes a collective
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()


def bf16_all_reduce_hook(group, bucket):  # unannotated: DDP checks the annotations as objects, not strings
    """DDP communication hook (``group: ProcessGroup | None, bucket: GradBucket -> Future[Tensor]``):
    the bucket's mean over ranks, all-reduced in bf16 (half the bytes of fp32), written back into the
    fp32 bucket. Any backend (PyTorch's ``bf16_compress_hook`` needs NCCL)."""
    group = group if group is not None else dist.group.WORLD
    grad = bucket.buffer()
    low = grad.to(torch.bfloat16).div_(dist.get_world_size(group))
    fut = dist.all_reduce(low, group=group, async_op=True).get_future()

    def write_back(f):
        return grad.copy_(f.value()[0])

    return fut.then(write_back)


def wrap_model(
    model: nn.Module, info: DistInfo, parallel: Parallel, device: torch.device, comm_dtype: CommDtype = "fp32"
) -> nn.Module:
    """The module the training step calls: ``model`` itself on one process, a DDP wrapper, or ``model``
    sharded in place by ``fully_shard`` (each of ``model.backbone.blocks``, then the root).
    ``comm_dtype`` is the dtype of the gradient (and, under FSDP, parameter) collectives."""
    if not info.enabled:
        return model
    if parallel == "ddp":
        index = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=index)
        if comm_dtype == "bf16":
            ddp.register_comm_hook(None, bf16_all_reduce_hook)
        return ddp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (info.world_size,))
    low = torch.bfloat16 if comm_dtype == "bf16" else None
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=low)
    for block in model.backbone.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` sharded ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local_tensor(t: Tensor) -> Tensor:
    """A DTensor's full value (a collective on its mesh); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``model.state_dict()`` and ``optimizer.state_dict()`` with full tensors. For a sharded model this
    is a collective (each DTensor is all-gathered in turn): every rank must call it; rank 0 gets the
    tensors on the CPU and the other ranks two empty dicts."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    main = dist.get_rank() == 0

    def gather(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        full = local_tensor(t)
        return full.cpu() if main else None

    weights = {name: gather(t) for name, t in model.state_dict().items()}
    optim = optimizer.state_dict()
    state = {i: {k: gather(v) for k, v in entry.items()} for i, entry in optim["state"].items()}
    if not main:
        return {}, {}
    return weights, {"state": state, "param_groups": optim["param_groups"]}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Tensor], optim: dict[str, Any]
) -> None:
    """Inverse of :func:`full_state`: load full tensors into a (possibly sharded) model and optimizer.
    For a sharded model every rank must call it with the same full state; each keeps its own shard of
    every tensor (no communication)."""
    if not is_sharded(model):
        model.load_state_dict(weights)
        optimizer.load_state_dict(optim)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    def shard(full: Any, like: Tensor) -> Any:
        if not isinstance(like, DTensor) or not isinstance(full, Tensor) or full.shape != like.shape:
            return full
        full = full.to(device=like.device, dtype=like.dtype)
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)

    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    if missing:
        raise KeyError(f"the checkpoint has no weights for {missing}")
    model.load_state_dict({name: shard(weights[name], like) for name, like in own.items()})
    params = list(model.parameters())
    state = {
        int(i): {k: shard(v, params[int(i)]) for k, v in entry.items()} for i, entry in optim["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": optim["param_groups"]})
