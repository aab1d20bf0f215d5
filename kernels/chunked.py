"""Token-chunk machinery shared by every op: one ``chunk × V`` logits buffer at a time.

For a chunk of rows ``H_c`` the raw logits are ``Z_c = H_c Wᵀ (+ b)`` and, for a per-row
loss ``L = Σ_i c_i ℓ_i`` (the ``c_i`` treated as constants), with ``G_c = ∂L/∂Z_c`` formed in place
by the row-ops backend (see :mod:`atwu_kernels.torch_impl`)::

    ∂L/∂H_c = G_c W          (rows of this chunk only: written once)
    ∂L/∂W  += G_cᵀ H_c       (accumulated over chunks in fp32)
    ∂L/∂b  += Σ_rows G_c     (fp32)

Two autograd functions use the one :func:`sweep`:

* :class:`LinearTokenNLL` — per-token NLL with arbitrary upstream gradient ``g``. Forward keeps
  only ``lse`` (O(N)); backward recomputes each chunk's logits with ``c_i = g_i`` (8·N·D·V FLOPs).
* :class:`FusedLinearLoss` — a scalar ``L = Σ c_i ℓ_i`` whose ``c_i`` may depend on the detached
  ``ℓ_i`` (ATWU's ``p^(βg)`` factor). Gradients are formed during forward (6·N·D·V FLOPs) and the
  backward only multiplies them by the scalar upstream gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .transform import LogitTransform

CoefficientFn = Callable[[torch.Tensor, slice], torch.Tensor]
"""``(nll_chunk fp32, row_slice) -> c_chunk``: per-row loss coefficients of one chunk."""


@dataclass
class SweepResult:
    lse: torch.Tensor | None
    nll: torch.Tensor | None
    coeff: torch.Tensor | None
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None  # fp32
    grad_bias: torch.Tensor | None  # fp32


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return h @ weight.t()
    return torch.addmm(bias, h, weight.t())


def _accumulate_grad_weight(acc: torch.Tensor | None, grad_z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``acc += G_cᵀ H_c`` in fp32 (the GEMM itself accumulates in fp32 internally)."""
    if acc is None:
        return (grad_z.t() @ h).float()
    if grad_z.dtype == torch.float32:
        return acc.addmm_(grad_z.t(), h)
    return acc.add_(grad_z.t() @ h)


def sweep(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ops,
    transform: LogitTransform,
    chunk_size: int,
    ignore_index: int,
    lse: torch.Tensor | None = None,
    coefficients: torch.Tensor | CoefficientFn | None = None,
    want_grad_hidden: bool = False,
    want_grad_weight: bool = False,
    want_grad_bias: bool = False,
) -> SweepResult:
    """One pass over ``hidden [N, D]`` in row chunks.

    * ``lse is None``: compute ``lse`` and ``nll`` (0 on ignored rows).
    * ``coefficients`` given (tensor ``[N]`` or :data:`CoefficientFn`): also form the per-row
      coefficients (forced to 0 on ignored rows) and the requested gradients of ``Σ c_i ℓ_i``.
    """
    n_rows = hidden.shape[0]
    device = hidden.device
    compute_stats = lse is None
    want_any_grad = coefficients is not None and (want_grad_hidden or want_grad_weight or want_grad_bias)
    if compute_stats:
        lse = torch.empty(n_rows, dtype=torch.float32, device=device)
        nll = torch.empty(n_rows, dtype=torch.float32, device=device)
    else:
        nll = None
    coeff_all = torch.empty(n_rows, dtype=torch.float32, device=device) if coefficients is not None else None
    grad_hidden = (
        torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if want_any_grad and want_grad_hidden else None
    )
    grad_weight = None
    grad_bias = (
        torch.zeros(weight.shape[0], dtype=torch.float32, device=device) if want_any_grad and want_grad_bias else None
    )

    for start in range(0, n_rows, chunk_size):
        rows = slice(start, min(start + chunk_size, n_rows))
        h = hidden[rows]
        y = labels[rows]
        valid = y != ignore_index
        z = _chunk_logits(h, weight, bias)
        if compute_stats:
            lse_c, target_c = ops.lse_and_target(z, y, transform)
            lse[rows] = lse_c
            nll[rows] = torch.where(valid, lse_c - target_c, 0.0)
        else:
            lse_c = lse[rows]
        if coefficients is None:
            continue
        c = coefficients[rows] if isinstance(coefficients, torch.Tensor) else coefficients(nll[rows], rows)
        c = torch.where(valid, c.to(torch.float32), 0.0).contiguous()
        coeff_all[rows] = c
        if not want_any_grad:
            continue
        grad_z = ops.logits_grad_(z, y, lse_c, c, transform)
        if grad_hidden is not None:
            torch.mm(grad_z, weight, out=grad_hidden[rows])
        if want_grad_weight:
            grad_weight = _accumulate_grad_weight(grad_weight, grad_z, h)
        if grad_bias is not None:
            grad_bias.add_(grad_z.sum(dim=0, dtype=torch.float32))
        del z, grad_z

    if want_any_grad and want_grad_weight and grad_weight is None:  # N == 0
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device)
    return SweepResult(lse, nll, coeff_all, grad_hidden, grad_weight, grad_bias)


def _cast(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    if grad is None or like is None:
        return None
    return grad.to(like.dtype)


class LinearTokenNLL(torch.autograd.Function):
    """``nll_i = lse(t(H_i Wᵀ + b)) − t(H_i Wᵀ + b)_{y_i}``; stores only ``lse`` for backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ops, transform, chunk_size, ignore_index):
        result = sweep(
            hidden, weight, bias, labels, ops=ops, transform=transform, chunk_size=chunk_size, ignore_index=ignore_index
        )
        ctx.save_for_backward(hidden, weight, bias, labels, result.lse)
        ctx.config = (ops, transform, chunk_size, ignore_index)
        return result.nll

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        ops, transform, chunk_size, ignore_index = ctx.config
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        result = sweep(
            hidden,
            weight,
            bias,
            labels,
            ops=ops,
            transform=transform,
            chunk_size=chunk_size,
            ignore_index=ignore_index,
            lse=lse,
            coefficients=grad_nll.to(torch.float32),
            want_grad_hidden=need_h,
            want_grad_weight=need_w,
            want_grad_bias=need_b and bias is not None,
        )
        return (
            result.grad_hidden,
            _cast(result.grad_weight, weight),
            _cast(result.grad_bias, bias),
            None,
            None,
            None,
            None,
            None,
        )


class FusedLinearLoss(torch.autograd.Function):
    """``L = Σ_i c_i ℓ_i`` with detached coefficients; gradients computed during forward.

    Returns ``(loss, nll, coeff)``; only ``loss`` is differentiable.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ops, transform, chunk_size, ignore_index, coefficients):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        result = sweep(
            hidden,
            weight,
            bias,
            labels,
            ops=ops,
            transform=transform,
            chunk_size=chunk_size,
            ignore_index=ignore_index,
            coefficients=coefficients,
            want_grad_hidden=need_h,
            want_grad_weight=need_w,
            want_grad_bias=need_b and bias is not None,
        )
        loss = torch.dot(result.coeff, result.nll)
        ctx.save_for_backward(result.grad_hidden, result.grad_weight, result.grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(result.nll, result.coeff)
        return loss, result.nll, result.coeff

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll, _grad_coeff):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_loss.to(torch.float32)
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * scale).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None
