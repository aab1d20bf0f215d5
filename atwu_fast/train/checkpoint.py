"""Crash-safe training checkpoints.

Layout: ``<root>/step-0000040/{model.safetensors, trainer_state.pt}`` plus a ``latest`` file naming
the newest complete checkpoint. A checkpoint directory is built under a temporary name and renamed
into place, then ``latest`` is replaced atomically, then older checkpoints are deleted — so a crash
at any moment leaves the previous checkpoint intact and pointed to. Weights are safetensors; the
trainer state is loaded with ``torch.load(weights_only=True)`` (tensors and plain Python only).

:func:`save_training_checkpoint` / :func:`load_training_checkpoint` are what a training loop calls on
every rank: they gather an FSDP-sharded model's weights and optimizer state before rank 0 writes, and
broadcast them back on resume, so the loop never handles sharding itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..data.io import atomic_dir, atomic_write_text
from ..model.distributed import (
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    load_full_state_dict,
    sharded_root,
)

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
OPTIMIZER_FILE = "optimizer_full.pt"  # an FSDP run's gathered optimizer state (read by rank 0 only)
POINTER = "latest"


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module | dict, state: dict,
                    optimizer: dict | None = None) -> Path:
    """``model``: the module, or its whole state dict (an FSDP run's gathered weights);
    ``optimizer``: an optimizer state kept apart from the trainer state (FSDP's gathered one)."""
    root = Path(root)
    target = root / f"step-{step:07d}"

    def build(d: Path) -> None:
        if isinstance(model, dict):
            save_file(_unshared(model), str(d / MODEL_FILE))
        else:
            save_model(model, str(d / MODEL_FILE))  # handles tied weights
        torch.save(state, d / STATE_FILE)
        if optimizer is not None:
            torch.save(optimizer, d / OPTIMIZER_FILE)

    atomic_dir(target, build)
    atomic_write_text(root / POINTER, target.name + "\n")
    for old in root.glob("step-*"):
        if old.name != target.name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return target


def _unshared(state: dict) -> dict:
    """Tensors that share storage (tied weights) cloned apart: safetensors stores each once."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone().contiguous() if ptr in seen else value.contiguous()
        seen.add(ptr)
    return out


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    root = Path(root)
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if (path / MODEL_FILE).is_file() and (path / STATE_FILE).is_file():
        return path
    return None


def load_checkpoint(path: str | Path, model: torch.nn.Module | None) -> dict:
    """Load the weights into ``model`` in place (None: leave them, see :func:`checkpoint_weights`);
    return the trainer state."""
    path = Path(path)
    if model is not None:
        load_model(model, str(path / MODEL_FILE))
    return torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")  # state moves to its params


def checkpoint_optimizer(path: str | Path) -> dict:
    """The optimizer state saved apart by :func:`save_checkpoint` (CPU)."""
    return torch.load(Path(path) / OPTIMIZER_FILE, weights_only=True, map_location="cpu")


def checkpoint_weights(path: str | Path) -> dict:
    """The checkpoint's weights as a state dict (CPU)."""
    return load_file(str(Path(path) / MODEL_FILE))


def save_training_checkpoint(root: str | Path, step: int, model: torch.nn.Module, optimizer, extra: dict,
                             state: dict, is_main: bool) -> None:
    """Every rank calls; rank 0 writes. ``state``: the loop's state without the optimizer; ``extra``: the
    unsharded modules the optimizer also updates (name -> module). Unsharded, the optimizer state goes
    into the trainer state; under FSDP the weights and the optimizer state are first gathered whole
    (collectives on every rank) and the optimizer state is stored apart."""
    if sharded_root(model) is None:
        if is_main:
            save_checkpoint(root, step, model, {**state, "optimizer": optimizer.state_dict()})
        return
    weights = full_state_dict(model)
    optimizer_state = full_optimizer_state(model, optimizer, extra)
    if is_main:
        save_checkpoint(root, step, weights, {**state, "optimizer": None}, optimizer_state)


def load_training_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, extra: dict,
                             is_main: bool) -> dict:
    """Inverse of :func:`save_training_checkpoint`, on every rank: the weights and the optimizer state
    restored in place (under FSDP rank 0 reads them and they are broadcast shard by shard); returns the
    loop's state."""
    if sharded_root(model) is None:
        state = load_checkpoint(path, model)
        optimizer.load_state_dict(state.pop("optimizer"))
        return state
    load_full_state_dict(model, checkpoint_weights(path) if is_main else {})
    load_full_optimizer_state(model, optimizer, extra, checkpoint_optimizer(path) if is_main else {})
    state = load_checkpoint(path, None)
    state.pop("optimizer", None)
    return state
