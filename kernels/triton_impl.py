"""Triton row operations on one chunk of raw logits (same contract as :class:`TorchRowOps`).

Algorithm family (token chunks, the gradient computed in the forward), the two GEMMs per chunk stay in
cuBLAS (``Z = H Wᵀ``, then ``G W`` and ``Gᵀ H``) and Triton does the row-wise, memory-bound part:

* :func:`_lse_target_kernel` — one program per ``BLOCK_R`` rows, online log-sum-exp over the
  vocabulary in ``BLOCK_V`` tiles, plus the target logit (read-only on ``Z``).
* :func:`_logits_grad_kernel` — one program per ``(BLOCK_R, BLOCK_V)`` tile, overwrites ``Z`` with
  ``c_i·(exp(t − lse_i) − [v = y_i])·dt/dz`` (the logits buffer is reused for the gradient).

Rationale: at Llama-3 scale the GEMMs are ≥ 95 % of the 6·N·D·V FLOPs and cuBLAS runs them near
peak; the row passes read/write one bf16 ``chunk × V`` buffer, which is cheap next to that.

Interpreter rules (TRITON_INTERPRET=1 on CPU): every load is upcast to fp32 right after
``tl.load``; tanh is ``2·σ(2x) − 1`` (no libdevice); float scalars are only multiplied, never
``.to()``-ed; offsets are int64; no autotune.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import triton_interpreting
from .transform import LogitTransform

_NEG_BIG = -1.0e30


@triton.jit
def _transformed(z, scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """``t = softcap·tanh(scale·z/softcap)`` and ``dt/dz`` (fp32)."""
    t = z * scale
    if HAS_SOFTCAP:
        u = 2.0 * tl.sigmoid(2.0 * (t / softcap)) - 1.0
        return u * softcap, scale * (1.0 - u * u)
    return t, scale + 0.0 * t


@triton.jit
def _lse_target_kernel(
    z_ptr,
    stride_z,
    labels_ptr,
    lse_ptr,
    target_ptr,
    n_rows,
    n_cols,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    running_max = tl.full((BLOCK_R,), _NEG_BIG, tl.float32)
    running_sum = tl.zeros((BLOCK_R,), tl.float32)
    target = tl.zeros((BLOCK_R,), tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        z = tl.load(z_ptr + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        t, _ = _transformed(z, scale, softcap, HAS_SOFTCAP)
        t = tl.where(mask, t, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(t, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(t - new_max[:, None]), axis=1)
        running_max = new_max
        target += tl.sum(tl.where(cols[None, :] == labels[:, None], t, 0.0), axis=1)
    lse = running_max + tl.log(tl.where(row_ok, running_sum, 1.0))
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(target_ptr + rows, target, mask=row_ok)


@triton.jit
def _logits_grad_kernel(
    z_ptr,
    stride_z,
    labels_ptr,
    lse_ptr,
    coeff_ptr,
    n_rows,
    n_cols,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < n_cols)[None, :]
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    coeff = tl.load(coeff_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    offsets = z_ptr + rows[:, None] * stride_z + cols[None, :]
    z = tl.load(offsets, mask=mask, other=0.0).to(tl.float32)
    t, dt_dz = _transformed(z, scale, softcap, HAS_SOFTCAP)
    probs = tl.exp(t - lse[:, None])
    onehot = tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
    grad = coeff[:, None] * (probs - onehot) * dt_dz
    tl.store(offsets, grad.to(z_ptr.dtype.element_ty), mask=mask)


def _blocks(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_V, num_warps). The interpreter's cost is per program: use big tiles there."""
    if triton_interpreting():
        return 32, min(2048, triton.next_power_of_2(max(n_cols, 16))), 4
    return 4, 1024, 8


class TritonRowOps:
    """Row-wise softmax statistics and in-place logits gradient as Triton kernels."""

    name = "triton"

    @staticmethod
    def lse_and_target(
        z: torch.Tensor, labels: torch.Tensor, transform: LogitTransform
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, vocab = z.shape
        assert z.stride(1) == 1, "logits chunk must be row-major"
        lse = torch.empty(rows, dtype=torch.float32, device=z.device)
        target = torch.empty(rows, dtype=torch.float32, device=z.device)
        if rows == 0:
            return lse, target
        block_r, block_v, num_warps = _blocks(vocab)
        _lse_target_kernel[(triton.cdiv(rows, block_r),)](
            z,
            z.stride(0),
            labels,
            lse,
            target,
            rows,
            vocab,
            transform.scale_or_one,
            transform.softcap_or_one,
            HAS_SOFTCAP=transform.softcap is not None,
            BLOCK_R=block_r,
            BLOCK_V=block_v,
            num_warps=num_warps,
        )
        return lse, target

    @staticmethod
    def logits_grad_(
        z: torch.Tensor,
        labels: torch.Tensor,
        lse: torch.Tensor,
        coeff: torch.Tensor,
        transform: LogitTransform,
    ) -> torch.Tensor:
        rows, vocab = z.shape
        assert z.stride(1) == 1, "logits chunk must be row-major"
        if rows == 0:
            return z
        block_r, block_v, num_warps = _blocks(vocab)
        grid = (triton.cdiv(rows, block_r), triton.cdiv(vocab, block_v))
        _logits_grad_kernel[grid](
            z,
            z.stride(0),
            labels,
            lse.contiguous(),
            coeff.contiguous(),
            rows,
            vocab,
            transform.scale_or_one,
            transform.softcap_or_one,
            HAS_SOFTCAP=transform.softcap is not None,
            BLOCK_R=block_r,
            BLOCK_V=block_v,
            num_warps=num_warps,
        )
        return z
