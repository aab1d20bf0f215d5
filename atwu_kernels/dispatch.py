"""Choose the backend: how the logits and their gradients are computed.

* ``"torch"`` — library GEMMs + PyTorch row ops (:mod:`.chunked`, :mod:`.torch_impl`); the CPU
  default and the test oracle.
* ``"triton"`` — library GEMMs (cuBLAS) + one Triton row kernel per chunk (:mod:`.triton_impl`);
  the CUDA default: its speed rests on cuBLAS, the part least in doubt.
* ``"triton_fused"`` — Triton GEMMs with the softmax statistics in the logits GEMM's epilogue and
  the softmax gradient formed as the ``dH``/``dW`` GEMMs load their operand, so ``G`` is never
  written (:mod:`.triton_fused`); an option until a GPU measurement says it should be the default.

``impl=None`` picks ``"triton"`` for CUDA tensors and ``"torch"`` elsewhere (:func:`default_impl`); the
public ops then pass a non-torch choice through a first-use self-check against the torch path, and
``ATWU_KERNELS_IMPL`` forces a backend instead (:mod:`atwu_kernels.selfcheck`). The Triton backends run
on CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1`` before import).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import chunked, scorer
from .interpreter import triton_interpreting
from .torch_impl import TorchRowOps

IMPLEMENTATIONS = ("torch", "triton", "triton_fused")


@dataclass(frozen=True)
class Backend:
    name: str
    sweep: Callable  # (hidden, weight, bias, labels, *, plan, ...) -> chunked.SweepResult
    scorer_scores: Callable  # (score_hidden2d, w, b) -> g [N] fp32
    scorer_row_sum: Callable  # (per_row [N], score_hidden2d) -> Σ r_i h_i [D] fp32


TORCH = Backend("torch", functools.partial(chunked.sweep, ops=TorchRowOps), scorer.scorer_scores, scorer.scorer_row_sum)


@functools.cache
def _triton_backend(name: str) -> Backend:
    from . import triton_scorer  # lazy: keeps the torch path free of Triton import costs

    if name == "triton":
        from .triton_impl import TritonRowOps

        sweep = functools.partial(chunked.sweep, ops=TritonRowOps)
    else:
        from .triton_fused import sweep
    return Backend(name, sweep, triton_scorer.scorer_scores, triton_scorer.scorer_row_sum)


def default_impl(device: torch.device) -> str:
    """The backend ``impl=None`` means on ``device``: ``"triton"`` on CUDA, ``"torch"`` elsewhere."""
    return "triton" if device.type == "cuda" else "torch"


def resolve_impl(device: torch.device, impl: str | None, choices: tuple[str, ...] = IMPLEMENTATIONS) -> str:
    """The backend name for ``impl`` on ``device`` (``None`` = ``"triton"`` on CUDA, ``"torch"``
    otherwise), checked against ``choices`` (the backends an op has) and, for a Triton one off CUDA,
    against the interpreter being on. Every op with an ``impl=`` argument goes through here."""
    if impl is None:
        impl = default_impl(device)
    if impl not in choices:
        raise ValueError(f"impl must be one of {choices} or None, got {impl!r}")
    if impl != "torch" and device.type != "cuda" and not triton_interpreting():
        raise ValueError(
            f"impl={impl!r} on a non-CUDA tensor needs TRITON_INTERPRET=1 set before atwu_kernels is imported"
        )
    return impl


def backend_for(device: torch.device, impl: str | None):
    """Backend object for ``impl`` (``None`` = ``"triton"`` on CUDA, ``"torch"`` otherwise)."""
    impl = resolve_impl(device, impl)
    return TORCH if impl == "torch" else _triton_backend(impl)
