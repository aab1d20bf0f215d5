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
from safetensors.torch import load_model, save_model

from .io import atomic_dir, atomic_write_text

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
POINTER = "latest"


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, state: dict) -> Path:
    root = Path(root)
    target = root / f"step-{step:07d}"

    def build(d: Path) -> None:
        save_model(model, str(d / MODEL_FILE))  # handles tied weights
        torch.save(state, d / STATE_FILE)

    atomic_dir(target, build)
    atomic_write_text(root / POINTER, target.name + "\n")
    for old in root.glob("step-*"):
        if old.name != target.name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return target


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


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict:
    """Load the weights into ``model`` in place; return the trainer state."""
    path = Path(path)
    load_model(model, str(path / MODEL_FILE))
    return torch.load(path / STATE_FILE, weights_only=True)
