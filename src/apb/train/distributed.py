"""Data-parallel training under ``torchrun``: process group, device, DDP wrapping, reductions.

``torchrun --nproc_per_node=N -m apb.train --config-json cfg.json`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` reads them, joins the process
group (gloo on CPU, NCCL on CUDA) and picks the device. Without them everything here
degrades to a single process: reductions return their input, barriers do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and the device it uses."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False
    """True when :func:`setup` created the process group, so :func:`teardown` destroys it."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, metrics and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment carries the variables ``torchrun`` sets."""
    return all(v in os.environ for v in TORCHRUN_VARIABLES)


def resolve_device(name: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """``"auto"`` is CUDA when available; under data parallelism each process takes
    ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was asked for but torch sees no CUDA device; use device='cpu'"
            )
        if distributed:
            return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str) -> DistContext:
    """Join the process group when launched by torchrun (or use one the caller already
    created); otherwise a single-process context."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local_rank, resolve_device(device, local_rank, world > 1))
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(0, 1, 0, resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    torch_device = resolve_device(device, local_rank, distributed=True)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
        backend = "nccl"
    else:
        backend = "gloo"
        # N processes share the machine's cores; oversubscribing them slows every rank.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
        torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, torch_device, owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` joined it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (``values`` itself when alone)."""
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers to every rank.

    DDP sends rank 0's buffers at the start of each forward, so after the last training step
    every rank holds its own BatchNorm running statistics; evaluating or saving then needs
    one model, the one rank 0 writes to the checkpoint.
    """
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        if buffer.dtype == torch.bool:  # not every backend reduces bool tensors
            carrier = buffer.to(torch.uint8)
            dist.broadcast(carrier, src=0)
            buffer.copy_(carrier.bool())
        else:
            dist.broadcast(buffer, src=0)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when there is more than one process.

    DDP records which parameters require gradients when it is built, so after a freeze
    turns ``requires_grad`` off the trainer wraps the model anew rather than letting DDP wait
    for gradients that never come.
    """
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
