"""Input checks shared by every op: shapes, label range, autocast compute dtype, gradient needs.

* **Shapes**: ``hidden [..., D]``, ``weight [V, D]``, ``labels = hidden.shape[:-1]``, ``bias [V]``.
* **Labels** must lie in ``[0, V)`` or equal ``ignore_index`` — the same rule as
  ``F.cross_entropy``. A label outside would otherwise be clamped for the loss but not for the
  gradient (PyTorch path) or read past the row (Triton). CPU tensors are checked on the host and
  raise :class:`IndexError`; CUDA tensors get an asynchronous device-side assert
  (``torch._assert_async``: two reductions over ``N`` labels, no host sync), which — as in
  ``F.cross_entropy`` on CUDA — surfaces as a device-side assertion error.
* **Autocast**: under ``torch.autocast(device, dtype=lp)`` the GEMMs run in ``lp`` (what
  ``nn.Linear`` would do), while softmax statistics stay fp32 and gradients come back in each
  input's own dtype (fp32 parameters get an fp32 ``dW`` accumulated in fp32, not a rounded ``lp``
  one). The ops therefore cast inside their autograd functions and run with autocast disabled, so
  no autocast rule can rewrite an ``out=`` GEMM.
* **Gradient needs**: ``dH``/``dW``/``db`` are formed only for inputs that require grad while grad
  mode is on; under ``torch.no_grad()``/``inference_mode()`` the ops do the forward work only
  (2·N·D·V FLOPs instead of 6 or 8, and no ``V×D`` buffer).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch


class Prepared(NamedTuple):
    hidden: torch.Tensor  # [N, D], original dtype (or promoted, outside autocast)
    weight: torch.Tensor  # [V, D]
    bias: torch.Tensor | None  # [V]
    labels: torch.Tensor  # [N] int64
    valid: torch.Tensor  # [N] bool
    compute_dtype: torch.dtype  # dtype of the GEMM operands
    needs: tuple[bool, bool, bool]  # gradient wanted for (hidden, weight, bias)

    @property
    def any_grad(self) -> bool:
        return any(self.needs)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for ``device``'s type, or ``None``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def no_autocast(device: torch.device):
    """Context that disables autocast for ``device``'s type (a no-op where autocast cannot run)."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def check_labels(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Labels in ``[0, V)`` or ``ignore_index``; host check on CPU, async device assert elsewhere."""
    if labels.numel() == 0:
        return
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if labels.device.type == "cpu":
        if bool(bad.any()):
            position = int(bad.nonzero()[0, 0])
            raise IndexError(
                f"label {int(labels[position])} at flat position {position} is out of range: labels must be in "
                f"[0, {vocab}) or equal ignore_index={ignore_index}"
            )
        return
    torch._assert_async(~bad.any(), f"atwu_kernels: labels must be in [0, {vocab}) or ignore_index={ignore_index}")


def grad_needs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[bool, bool, bool]:
    if not torch.is_grad_enabled():
        return (False, False, False)
    return (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)


def prepare(hidden, weight, labels, bias, ignore_index) -> Prepared:
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be [V, D] with D = hidden.shape[-1]; got {tuple(weight.shape)}, {tuple(hidden.shape)}"
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"labels.shape {tuple(labels.shape)} must equal hidden.shape[:-1] {tuple(hidden.shape[:-1])}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [V]={weight.shape[0]}, got {tuple(bias.shape)}")
    flat_labels = labels.reshape(-1).to(torch.long).contiguous()
    check_labels(flat_labels, weight.shape[0], ignore_index)
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    amp = autocast_dtype(hidden.device)
    if amp is not None and hidden.is_floating_point() and weight.is_floating_point():
        # casts happen inside the autograd functions, so gradients keep each input's dtype
        compute_dtype = amp
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
        hidden2d = hidden2d.to(compute_dtype)
        weight = weight.to(compute_dtype)
        bias = None if bias is None else bias.to(compute_dtype)
    return Prepared(
        hidden2d,
        weight,
        bias,
        flat_labels,
        flat_labels != ignore_index,
        compute_dtype,
        grad_needs(hidden2d, weight, bias),
    )
