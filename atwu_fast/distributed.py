"""Data-parallel training on torch.distributed (launched by ``torchrun`` or ``accelerate launch``).

The model is wrapped in :class:`torch.nn.parallel.DistributedDataParallel`; each rank takes a
contiguous shard of every global micro-batch. To make the distributed loss equal the
single-process loss at the same global batch, every normaliser is global: token counts N_F, N_R
and the number of forget sequences are summed over ranks, each rank's loss is its share of the
global sums, and the loss is multiplied by the world size to undo DDP's gradient averaging. The
ATWU scorer (D + 1 parameters) is replicated; its gradient is summed with an all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        if not self.enabled:
            return indices
        n = len(indices)
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return indices[start:start + base + (1 if self.rank < extra else 0)]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = DistContext()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly (after every rank is done)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_from_env() -> DistContext:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment
    (WORLD_SIZE, RANK, MASTER_ADDR, ...); a plain run gets the single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size())


class ModelStep(nn.Module):
    """Runs a whole loss computation ``fn(model)`` as this module's forward, so that the
    DistributedDataParallel wrapper sees one forward per micro-batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn):
        return fn(self.model)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    step = ModelStep(model)
    if not ctx.enabled:
        return step
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(step, device_ids=device_ids)
