"""The scorer's two mat-vecs as Triton kernels that read ``H_s`` in its own dtype.

* :func:`scorer_scores` — ``g_i = σ(h_i·w + b)``: one program per ``BLOCK_R`` rows, fp32 dot over ``D``.
* :func:`scorer_row_sum` — ``Σ_i r_i h_i``: programs over (``D`` block, row split) write fp32
  partial sums ``[splits, D]`` that one ``sum`` reduces (deterministic, no atomics).

Each reads ``N·D·s`` bytes once (32 MB at N=D=4096 bf16: ≈ 7 µs at 4.8 TB/s) and does ``2·N·D``
FLOPs; the PyTorch path instead made an fp32 copy of ``H_s`` (``4·N·D`` bytes written and read).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .interpreter import triton_interpreting


@triton.jit(do_not_specialize=["n_rows", "dim"])
def _scores_kernel(h_ptr, stride_h, w_ptr, b_ptr, out_ptr, n_rows, dim, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = rows < n_rows
    acc = tl.zeros((BLOCK_R,), tl.float32)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < dim
        h = tl.load(h_ptr + rows[:, None] * stride_h + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc += tl.sum(h.to(tl.float32) * w[None, :], axis=1)
    bias = tl.load(b_ptr).to(tl.float32)
    tl.store(out_ptr + rows, tl.sigmoid(acc + bias), mask=row_ok)


@triton.jit(do_not_specialize=["n_rows", "dim", "rows_per_split"])
def _row_sum_kernel(
    r_ptr, h_ptr, stride_h, out_ptr, n_rows, dim, rows_per_split, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    pid_d = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < dim
    acc = tl.zeros((BLOCK_D,), tl.float32)
    first = split * rows_per_split
    for offset in range(0, rows_per_split, BLOCK_R):
        rows = first + offset + tl.arange(0, BLOCK_R).to(tl.int64)
        row_ok = (rows < n_rows) & (rows < first + rows_per_split)
        r = tl.load(r_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + rows[:, None] * stride_h + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(r[:, None] * h.to(tl.float32), axis=0)
    tl.store(out_ptr + split * dim + cols, acc, mask=col_ok)


def _tiles(dim: int) -> tuple[int, int]:
    if triton_interpreting():
        return 64, triton.next_power_of_2(max(16, min(dim, 256)))
    return 16, 256


def scorer_scores(score_hidden2d: torch.Tensor, scorer_weight: torch.Tensor, scorer_bias: torch.Tensor) -> torch.Tensor:
    """``g = σ(h·w + b)`` in fp32, detached."""
    h = score_hidden2d.detach()
    if h.stride(-1) != 1:
        h = h.contiguous()
    n_rows, dim = h.shape
    out = torch.empty(n_rows, dtype=torch.float32, device=h.device)
    if n_rows == 0:
        return out
    w = scorer_weight.detach().reshape(-1).to(torch.float32).contiguous()
    b = scorer_bias.detach().reshape(1).to(torch.float32)
    block_r, block_d = _tiles(dim)
    _scores_kernel[(triton.cdiv(n_rows, block_r),)](
        h, h.stride(0), w, b, out, n_rows, dim, BLOCK_R=block_r, BLOCK_D=block_d
    )
    return out


def scorer_row_sum(per_row: torch.Tensor, score_hidden2d: torch.Tensor) -> torch.Tensor:
    """``Σ_i r_i h_i`` in fp32 (``[D]``)."""
    h = score_hidden2d.detach()
    if h.stride(-1) != 1:
        h = h.contiguous()
    n_rows, dim = h.shape
    block_r, block_d = _tiles(dim)
    splits = 1 if triton_interpreting() else max(1, min(64, triton.cdiv(n_rows, 256)))
    rows_per_split = triton.cdiv(max(n_rows, 1), splits)
    partial = torch.empty(splits, dim, dtype=torch.float32, device=h.device)
    r = per_row.detach().to(torch.float32).contiguous()
    _row_sum_kernel[(triton.cdiv(dim, block_d), splits)](
        r, h, h.stride(0), partial, n_rows, dim, rows_per_split, BLOCK_R=block_r, BLOCK_D=block_d
    )
    return partial.sum(dim=0)
