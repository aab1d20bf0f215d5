"""Triton path of :func:`atwu_kernels.distill.linear_distillation` (``impl="triton"``, the CUDA default).

Same design as :mod:`atwu_kernels.triton_impl`: per chunk of ``C`` rows the GEMMs stay in the
library (cuBLAS on CUDA) — ``Z = H Wᵀ (+ b)`` and ``U = H_T W_Tᵀ (+ b_T)``, then ``G W`` and
``Gᵀ H`` through :mod:`atwu_kernels.gemm_accumulate` (fp32 accumulation of ``dW``) — and all the
row work is **one** kernel, :func:`_distill_rows_kernel`, over the two raw logits chunks:

* statistics (forward), one pass over the vocabulary tiles: online log-sum-exp of ``t = t(z)``;
  online log-sum-exp of the adjusted teacher logits ``a = t(u) − shift·e_y`` together with the
  rescaled sum ``Σ_v exp(a_v − m)·t_v``, so that ``Σ_v q_v t_v`` comes out of the same pass; the
  label's ``t_y``. Per row it writes ``lse(t)``, ``lse(a)``, the loss ``lse(t) − Σ q t`` and the
  student NLL ``lse(t) − t_y`` (0 on ignored rows);
* gradient (backward), one pass with the forward's two ``lse``: ``G = g_i·(exp(t − lse(t)) −
  exp(a − lse(a)))·dt/dz`` written over ``Z`` in place (``g_i`` the upstream gradient, 0 on
  ignored rows).

The forward keeps ``2·N`` fp32 numbers (the two ``lse``) beside its inputs; the backward recomputes
both logits chunks with the GEMMs.

Cost of one forward + backward, ``N`` rows, ``D`` hidden size, ``V`` vocabulary, ``s`` bytes per
logit: FLOPs ``12·N·D·V`` (forward: two logits GEMMs, ``4·N·D·V``; backward: the two again plus
``dH`` and ``dW``, ``8·N·D·V``); logits bytes ``11·N·V·s`` — forward: two GEMM writes, one kernel
read of each (``4·N·V·s``); backward: two GEMM writes, kernel reads of both and the write of ``G``,
the ``dH``/``dW`` GEMMs' reads of ``G`` (``7·N·V·s``). Outside the GEMMs (bandwidth-bound, the row
kernel): ``5·N·V·s`` (forward 2, backward 3). At N=4096, V=128256, bf16: 5.3 GB ≈ 1.3 ms at
4.2 TB/s beside ≈ 37 ms of GEMMs at 700 TFLOP/s (D=4096). The torch path does the same GEMMs; its
row work moves ≈ 78 GB (:mod:`atwu_kernels.distill` tabulates both). Not yet timed on a GPU.

Interpreter rules as in :mod:`atwu_kernels.triton_impl` (loads upcast to fp32 right after
``tl.load``, tanh as ``2σ(2x) − 1``, float scalars only multiplied, int64 offsets, sizes not
specialised on).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .gemm_accumulate import WeightGradAccumulator, hidden_grad_into, linear_logits
from .inputs import no_autocast
from .interpreter import triton_interpreting
from .transform import LogitTransform
from .triton_impl import transformed

_NEG_BIG = tl.constexpr(-1.0e30)  # a constexpr: compiled kernels may read no other kind of global


@triton.jit(do_not_specialize=["n_rows", "n_cols"])
def _distill_rows_kernel(
    z_ptr,
    stride_z,
    u_ptr,
    stride_u,
    labels_ptr,
    valid_ptr,
    coeff_ptr,
    lse_z_ptr,
    lse_q_ptr,
    loss_ptr,
    nll_ptr,
    n_rows,
    n_cols,
    shift,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    STATS: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0).to(tl.int64)  # in [0, V): ignored rows carry 0
    z_rows = z_ptr + rows[:, None] * stride_z
    u_rows = u_ptr + rows[:, None] * stride_u
    if STATS:
        max_z = tl.full((BLOCK_R,), _NEG_BIG, tl.float32)
        sum_z = tl.zeros((BLOCK_R,), tl.float32)
        max_q = tl.full((BLOCK_R,), _NEG_BIG, tl.float32)
        sum_q = tl.zeros((BLOCK_R,), tl.float32)
        weighted = tl.zeros((BLOCK_R,), tl.float32)  # Σ_v exp(a_v − max_q)·t_v
        target = tl.zeros((BLOCK_R,), tl.float32)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
            mask = row_ok[:, None] & (cols < n_cols)[None, :]
            onehot = tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
            z = tl.load(z_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            t, _ = transformed(z, scale, softcap, HAS_SOFTCAP)
            t = tl.where(mask, t, 0.0)
            u = tl.load(u_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            a, _ = transformed(u, scale, softcap, HAS_SOFTCAP)
            a = tl.where(mask, a - shift * onehot, float("-inf"))
            t_masked = tl.where(mask, t, float("-inf"))
            new_max = tl.maximum(max_z, tl.max(t_masked, axis=1))
            sum_z = sum_z * tl.exp(max_z - new_max) + tl.sum(tl.exp(t_masked - new_max[:, None]), axis=1)
            max_z = new_max
            new_max = tl.maximum(max_q, tl.max(a, axis=1))
            rescale = tl.exp(max_q - new_max)
            e = tl.exp(a - new_max[:, None])  # 0 off the mask, where t is 0 too
            sum_q = sum_q * rescale + tl.sum(e, axis=1)
            weighted = weighted * rescale + tl.sum(e * t, axis=1)
            max_q = new_max
            target += tl.sum(onehot * t, axis=1)
        sum_z = tl.where(row_ok, sum_z, 1.0)
        sum_q = tl.where(row_ok, sum_q, 1.0)
        lse_z = max_z + tl.log(sum_z)
        lse_q = max_q + tl.log(sum_q)
        valid = tl.load(valid_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) != 0.0
        tl.store(lse_z_ptr + rows, lse_z, mask=row_ok)
        tl.store(lse_q_ptr + rows, lse_q, mask=row_ok)
        tl.store(loss_ptr + rows, tl.where(valid, lse_z - weighted / sum_q, 0.0), mask=row_ok)
        tl.store(nll_ptr + rows, tl.where(valid, lse_z - target, 0.0), mask=row_ok)
    else:
        lse_z = tl.load(lse_z_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        lse_q = tl.load(lse_q_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if GRAD:
        c = tl.load(coeff_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)  # g_i, 0 on ignored rows
        lse_z = tl.where(row_ok, lse_z, 0.0)  # padding rows: keep exp finite
        lse_q = tl.where(row_ok, lse_q, 0.0)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
            mask = row_ok[:, None] & (cols < n_cols)[None, :]
            onehot = tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
            offsets = z_rows + cols[None, :]
            z = tl.load(offsets, mask=mask, other=0.0).to(tl.float32)
            t, dt_dz = transformed(z, scale, softcap, HAS_SOFTCAP)
            u = tl.load(u_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            a, _ = transformed(u, scale, softcap, HAS_SOFTCAP)
            a = a - shift * onehot
            grad = c[:, None] * (tl.exp(t - lse_z[:, None]) - tl.exp(a - lse_q[:, None])) * dt_dz
            tl.store(offsets, grad.to(z_ptr.dtype.element_ty), mask=mask)


# (BLOCK_R, BLOCK_V, num_warps) on a GPU: two operands per tile, so half the columns of
# triton_impl.GPU_ROW_TILES for the same 32 fp32 values per thread per operand. ptxas (sm_90,
# soft cap, bf16): 178 registers for the statistics pass, 91 for the gradient pass, no spills;
# 2048 columns would take 245. Not yet timed.
GPU_DISTILL_TILES = (4, 1024, 8)


def _blocks(n_cols: int) -> tuple[int, int, int]:
    """The interpreter's cost is per program: big tiles there (a test also runs the GPU tiles)."""
    if triton_interpreting():
        return 32, min(2048, triton.next_power_of_2(max(n_cols, 16))), 4
    return GPU_DISTILL_TILES


def run_distill_rows(z, u, labels, valid, transform: LogitTransform, shift: float, *, lse=None, coeff=None):
    """Launch :func:`_distill_rows_kernel` on one chunk.

    ``lse is None``: the statistics pass; returns ``(lse_z, lse_q, loss, nll)``. ``coeff`` given
    (``[C]`` fp32, 0 on ignored rows): also the gradient, written over ``z``; with ``lse =
    (lse_z, lse_q)`` given, the gradient pass alone (returns ``None``).
    """
    n_rows, vocab = z.shape
    assert u.shape == z.shape and z.stride(1) == 1 and u.stride(1) == 1, "logits chunks must be row-major"
    stats = lse is None
    device = z.device
    if stats:
        lse_z, lse_q, loss, nll = (torch.empty(n_rows, dtype=torch.float32, device=device) for _ in range(4))
    else:
        lse_z, lse_q = (x.contiguous() for x in lse)
        loss = nll = None
    if n_rows:
        block_r, block_v, num_warps = _blocks(vocab)
        _distill_rows_kernel[(triton.cdiv(n_rows, block_r),)](
            z,
            z.stride(0),
            u,
            u.stride(0),
            labels,
            valid,
            coeff if coeff is not None else lse_z,
            lse_z,
            lse_q,
            loss if loss is not None else lse_z,
            nll if nll is not None else lse_z,
            n_rows,
            vocab,
            float(shift),
            transform.scale_or_one,
            transform.softcap_or_one,
            HAS_SOFTCAP=transform.softcap is not None,
            STATS=stats,
            GRAD=coeff is not None,
            BLOCK_R=block_r,
            BLOCK_V=block_v,
            num_warps=num_warps,
        )
    return (lse_z, lse_q, loss, nll) if stats else None


class LinearDistillationTriton(torch.autograd.Function):
    """The Triton twin of :class:`atwu_kernels.distill._LinearDistillation` (same arguments).

    Both passes run with autocast disabled, in the dtypes :func:`~atwu_kernels.distill.linear_distillation`
    cast the operands to: the backward's gradient uses the forward's ``lse``, so its recomputed logits
    must be the forward's, whatever autocast state the backward runs in."""

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, valid, shift, transform, chunk
    ):
        n = hidden.shape[0]
        device = hidden.device
        loss, nll, lse_z, lse_q = (torch.zeros(n, dtype=torch.float32, device=device) for _ in range(4))
        with torch.no_grad(), no_autocast(device):
            for lo in range(0, n, chunk):
                rows = slice(lo, lo + chunk)
                z = linear_logits(hidden[rows], weight, bias)
                u = linear_logits(teacher_hidden[rows], teacher_weight, teacher_bias)
                lse_z[rows], lse_q[rows], loss[rows], nll[rows] = run_distill_rows(
                    z, u, labels[rows], valid[rows], transform, shift
                )
                del z, u
        ctx.save_for_backward(
            hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, valid, lse_z, lse_q
        )
        ctx.shift, ctx.transform, ctx.chunk = shift, transform, chunk
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        (hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, valid, lse_z, lse_q) = (
            ctx.saved_tensors
        )
        chunk = ctx.chunk
        n = hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_b = need_b and bias is not None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            WeightGradAccumulator(weight.shape, weight.device, weight.dtype, math.ceil(n / chunk)) if need_w else None
        )
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        coeff = grad_loss.float() * valid
        device = hidden.device
        with torch.no_grad(), no_autocast(device):
            if need_h or need_w or need_b:
                for lo in range(0, n, chunk):
                    rows = slice(lo, lo + chunk)
                    g = linear_logits(hidden[rows], weight, bias)
                    u = linear_logits(teacher_hidden[rows], teacher_weight, teacher_bias)
                    run_distill_rows(
                        g,
                        u,
                        labels[rows],
                        valid[rows],
                        ctx.transform,
                        ctx.shift,
                        lse=(lse_z[rows], lse_q[rows]),
                        coeff=coeff[rows].contiguous(),
                    )
                    del u  # g now holds ∂/∂z
                    if need_h:
                        hidden_grad_into(grad_h[rows], g, weight)
                    if need_w:
                        grad_w.add(g, hidden[rows])
                    if need_b:
                        grad_b.add_(g.sum(0, dtype=torch.float32))
                    del g
        return (
            grad_h,
            None if grad_w is None else grad_w.result(),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
