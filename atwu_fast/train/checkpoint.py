"""Crash-safe training checkpoints.

Layout: ``<root>/step-0000040/{model.safetensors, trainer_state.pt}`` plus a ``latest`` file naming
the newest complete checkpoint. A checkpoint directory is built under a temporary name and renamed
into place, then ``latest`` is replaced atomically, then older checkpoints are deleted — so a crash
at any moment leaves the previous checkpoint intact and pointed to. Weights are safetensors; the
trainer state is loaded with ``torch.load(weights_only=True)`` (tensors and plain Python only).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..data.io import atomic_dir, atomic_write_text

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
