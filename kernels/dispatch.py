"""Choose the row-ops backend: Triton for CUDA tensors, PyTorch elsewhere, overridable."""

from __future__ import annotations

import os

import torch

from .torch_impl import TorchRowOps

IMPLEMENTATIONS = ("torch", "triton")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def row_ops_for(device: torch.device, impl: str | None):
    """Backend object for ``impl`` (``None`` = Triton on CUDA, torch otherwise)."""
    if impl is None:
        impl = "triton" if device.type == "cuda" else "torch"
    if impl == "torch":
        return TorchRowOps
    if impl == "triton":
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                "impl='triton' on a non-CUDA tensor needs TRITON_INTERPRET=1 set before atwu_kernels is imported"
            )
        from .triton_impl import TritonRowOps  # lazy: keeps the torch path free of Triton import costs

        return TritonRowOps
    raise ValueError(f"impl must be one of {IMPLEMENTATIONS} or None, got {impl!r}")
