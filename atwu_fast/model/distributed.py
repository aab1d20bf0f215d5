"""Data-parallel training on torch.distributed (launched by ``torchrun`` or ``accelerate launch``).

Two engines, both torch's own: ``ddp`` wraps the model in
:class:`torch.nn.parallel.DistributedDataParallel` (every rank holds all weights); ``fsdp`` shards
weights, gradients and optimizer state with FSDP2 (``torch.distributed.fsdp.fully_shard``: one unit
per decoder layer plus a root unit holding the embeddings, final norm and LM head). Each rank takes
a contiguous shard of every global micro-batch. To make the distributed loss equal the
single-process loss at the same global batch, every normaliser is global: token counts N_F, N_R
and the number of forget sequences are summed over ranks, each rank's loss is its share of the
global sums, and the loss is multiplied by the world size to undo DDP's gradient averaging. The
ATWU scorer (D + 1 parameters) is replicated; its gradient is summed with an all-reduce.
"""

from __future__ import annotations

import functools
import gc
import importlib
import math
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    def all_gather(self, value: Any) -> list:
        """Every rank's ``value`` (any picklable object), in rank order; ``[value]`` for one process."""
        if not self.enabled:
            return [value]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def decide(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (resume decisions read from files: ranks that see the
        file system differently must still take the same branch)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = DistContext()


GROUP_OUTLIVED_SHUTDOWN = ("the process group is still referenced after shutdown (a model or optimizer of the "
                           "run is alive); the process may abort at exit")


def shutdown(ctx: DistContext) -> bool:
    """Leave the process group cleanly, after every rank is done and after the caller has let go of
    the models that hold the group (FSDP's device mesh, a DDP wrapper). Returns whether the group is
    gone (always true for one process); warns when something still holds it.

    Why the group must be freed here and not at exit: gloo's worker threads drop a finished
    collective's tensors on their own schedule, after the caller's ``wait`` returned. If the group
    outlives the interpreter, a thread that does so during finalisation cannot take the GIL and the
    process aborts ("terminate called without an active exception"), at random and more often under
    load. The group's destructor joins those threads, so freeing it while the interpreter is whole
    closes the race: destroy it, empty torch's DTensor caches that hold FSDP's device mesh (and so
    the group) for the life of the process, and collect the reference cycles that still name it."""
    if not (ctx.enabled and dist.is_initialized()):
        return True
    group = weakref.ref(dist.group.WORLD)
    dist.barrier()
    dist.destroy_process_group()
    clear_mesh_caches()
    gc.collect()
    if group() is not None:
        warnings.warn(GROUP_OUTLIVED_SHUTDOWN, RuntimeWarning, stacklevel=2)
        return False
    return True


# Caches torch keeps for the life of the process that are not functools caches but whose keys hold
# a DeviceMesh (and so the process group under it): (module, the function that empties it).
MESH_CACHES = (
    ("torch.distributed.tensor.debug", "_clear_fast_path_sharding_prop_cache"),  # DTensor's C++ dispatch cache
    ("torch.distributed.tensor._redistribute", "clear_redistribute_planner_cache"),
)


def clear_mesh_caches() -> None:
    """Empty torch.distributed's memo caches: every functools cache its modules define (sharding
    propagation, redistribution plans, mesh topology: keyed by DTensor specs or meshes) and the ones
    in :data:`MESH_CACHES`; one this torch does not have is skipped. Only for after the last collective:
    they refill on use."""
    for obj in gc.get_objects():
        if type(obj) in weakref.ProxyTypes:  # a dead proxy raises on any look (torch.compile leaves some)
            continue
        if isinstance(obj, functools._lru_cache_wrapper) and str(getattr(obj, "__module__", "")).startswith(
                "torch.distributed."):
            obj.cache_clear()
    for module_name, function_name in MESH_CACHES:
        try:
            clear = getattr(importlib.import_module(module_name), function_name, None)
        except ImportError:
            continue
        if callable(clear):
            clear()


def init_from_env(cuda: bool | None = None) -> DistContext:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment
    (WORLD_SIZE, RANK, MASTER_ADDR, ...); a plain run gets the single-process context. ``cuda``:
    whether the model runs on GPUs (NCCL, each rank on its LOCAL_RANK device) or on CPUs (gloo);
    default: whether CUDA is available."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:  # each rank on its own GPU (before NCCL binds one)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size())


class ModelStep(nn.Module):
    """Runs a whole loss computation ``fn(model)`` as this module's forward, so that the
    DistributedDataParallel wrapper sees one forward per micro-batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn):
        return fn(self.model)


_ROOT_ATTR = "_atwu_fsdp_root"  # kept in the model's __dict__: not a registered submodule


def parallel_engine(requested: str) -> str:
    """``auto``: FSDP when ``accelerate launch`` was told to use it (its ACCELERATE_USE_FSDP), else DDP."""
    if requested != "auto":
        return requested
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "ddp"


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: the model's own no-split blocks (its decoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules); "
                         "use --efficiency.parallel ddp")
    return units


def wrap(model: nn.Module, ctx: DistContext, engine: str = "ddp") -> nn.Module:
    """The module whose forward runs one whole loss computation (see :class:`ModelStep`):
    plain, DDP-wrapped, or FSDP2-sharded in place (``model``'s weights become DTensor shards)."""
    step = ModelStep(model)
    if not ctx.enabled:
        return step
    if engine == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(next(model.parameters()).device.type, (ctx.world,))
        for unit in shard_units(model):
            fully_shard(unit, mesh=mesh)
        fully_shard(step, mesh=mesh)
        model.__dict__[_ROOT_ATTR] = step  # a reference cycle, collected with the model
        return step
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(step, device_ids=device_ids)


def sharded_root(model: nn.Module) -> nn.Module | None:
    """The FSDP root wrapping ``model``, or None when its weights are whole on this rank."""
    return model.__dict__.get(_ROOT_ATTR)


def run_on(model: nn.Module, fn: Callable[[nn.Module], Any]) -> Any:
    """``fn(model)``; for an FSDP-sharded model through its root, so the weights are gathered."""
    root = sharded_root(model)
    return root(fn) if root is not None else fn(model)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on CPU: gathered from every rank under FSDP (a collective:
    call on every rank; only rank 0 gets the tensors, the others None), else ``model.state_dict()``."""
    root = sharded_root(model)
    if root is None:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    state = {k[len("model."):]: v for k, v in full.items()}
    tied: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = tied.setdefault(id(param), name)
        if first != name and first in state:
            state[name] = state[first]  # tied weights stay one tensor (save_pretrained stores it once)
    return state


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`full_state_dict`: under FSDP rank 0 passes the whole state (the other
    ranks an empty dict) and it is broadcast shard by shard; else ``model.load_state_dict``."""
    root = sharded_root(model)
    if root is None:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(root, {"model." + k: v for k, v in state.items()},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _state_root(model: nn.Module, extra: dict[str, nn.Module]) -> nn.Module:
    return nn.ModuleDict({"step": sharded_root(model), **extra})


def full_optimizer_state(model: nn.Module, optimizer, extra: dict[str, nn.Module]) -> dict:
    """The optimizer state of an FSDP-sharded ``model`` (plus the unsharded ``extra`` modules it
    also optimises), gathered whole to CPU; a collective, meaningful on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(_state_root(model, extra), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer, extra: dict[str, nn.Module], state: dict) -> None:
    """Inverse of :func:`full_optimizer_state` (rank 0 passes the state, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(_state_root(model, extra), optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


# --------------------------------------------------------------------------- collective evaluation
def map_batches(model: nn.Module, items: list, batch_size: int, fn: Callable[[nn.Module, list], list],
                starts=None, ctx: DistContext = SINGLE) -> list:
    """``fn(model, part)`` over ``items`` in batches of ``batch_size`` (one result per item, on the
    CPU), run through :func:`run_on`. With a distributed ``ctx`` (the run's, passed down by the driver
    or ``python -m atwu_fast.eval``; every rank must then make the same call) each rank maps its
    contiguous shard and the results come back from every rank in the original order; a sharded
    model's ranks with fewer batches run padding batches, so every rank makes the same forward calls.
    With the default :data:`SINGLE` this process maps every item (an FSDP-sharded model in a
    multi-rank group then raises: its forwards are collectives). ``starts(n, batch_size)`` may supply
    the batch offsets (a progress bar)."""
    sharded = sharded_root(model) is not None
    if sharded and not ctx.enabled and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError("an FSDP-sharded model must be evaluated collectively: pass the run's DistContext "
                           "(ctx=) on every rank")
    mine = [items[i] for i in ctx.shard(list(range(len(items))))]
    results: list = []
    for lo in (starts(len(mine), batch_size) if starts else range(0, len(mine), batch_size)):
        results.extend(run_on(model, lambda m, part=mine[lo:lo + batch_size]: fn(m, part)))
    if sharded and ctx.enabled and items:
        most = math.ceil(math.ceil(len(items) / ctx.world) / batch_size)
        for _ in range(most - math.ceil(len(mine) / batch_size)):
            run_on(model, lambda m: fn(m, items[:1]))  # keeps the sharded forwards in step; dropped
    if sharded:
        sharded_root(model).reshard()  # a no-grad forward leaves the root unit gathered
    if not ctx.enabled:
        return results
    return [r for part in ctx.all_gather(results) for r in part]


def split_rows(seq: torch.Tensor, n: int, *columns: torch.Tensor | None) -> list[tuple]:
    """Token-level ``columns`` cut into ``n`` per-row tuples on the CPU (``seq``: each token's row;
    a None column stays None) — the per-item results :func:`map_batches` gathers."""
    seq = seq.cpu()
    columns = tuple(None if c is None else c.detach().cpu() for c in columns)
    return [tuple(None if c is None else c[seq == i] for c in columns) for i in range(n)]


def join_rows(rows: list[tuple]) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Inverse of :func:`split_rows` over all rows: each column concatenated row-major (None if any
    row's is None), and each token's row index."""
    columns = [None if any(c is None for c in col) else torch.cat(col) for col in zip(*rows)]
    seq = torch.cat([torch.full((len(r[0]),), i, dtype=torch.long) for i, r in enumerate(rows)])
    return columns, seq


def generation_kwargs(model: nn.Module, ctx: DistContext = SINGLE) -> dict:
    """Extra ``generate`` arguments: a sharded model evaluated over ``ctx``'s ranks must keep them
    stepping together."""
    return {"synced_gpus": True} if sharded_root(model) is not None and ctx.enabled else {}
