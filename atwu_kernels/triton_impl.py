"""Triton row kernel for the cuBLAS path (``impl="triton"``, the CUDA default).

Per chunk the GEMMs stay in cuBLAS (``Z = H Wᵀ``, then ``G W`` and ``Gᵀ H``, see
:mod:`atwu_kernels.chunked`) and everything row-wise is **one** kernel, :func:`_rows_kernel`:

1. online log-sum-exp and target logit over the row's ``V`` logits (read 1);
2. ``ℓ_i`` and the row coefficient ``c_i`` — given (weighted CE, upstream gradient) or the ATWU
   rule evaluated from ``ℓ_i`` in registers (:func:`atwu_coefficient`);
3. ``G = c_i·(exp(t − lse_i) − [v = y_i])·dt/dz`` written over ``Z`` (read 2, write 1).

Cost per chunk of ``C`` rows, bf16 logits: ``3·C·V·2`` bytes (reads 2, write 1), no FLOP-heavy
work. At C=4096, V=128256: 3.15 GB ≈ 0.75 ms at 4.2 TB/s (H200 peak 4.8). The statistics-only
variant (``linear_token_nll`` forward) reads once; the gradient-only variant (its backward) reads
once and writes once.

Sizes are not specialised on (``do_not_specialize``): the row count changes every training step,
and a recompilation per divisibility class would stall it.

Interpreter rules (TRITON_INTERPRET=1 on CPU): every load is upcast to fp32 right after
``tl.load``; tanh is ``2·σ(2x) − 1`` (no libdevice); float scalars are only multiplied, never
``.to()``-ed; offsets are int64; no autotune.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .coefficients import FORGET, RETAIN, AtwuCoefficients
from .interpreter import triton_interpreting
from .transform import LogitTransform

NEG_BIG = tl.constexpr(-1.0e30)  # compiled kernels may read only constexpr globals
COEFF_NONE, COEFF_GIVEN, COEFF_ATWU = 0, 1, 2


@triton.jit
def transformed(z, scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """``t = softcap·tanh(scale·z/softcap)`` and ``dt/dz`` (fp32)."""
    t = z * scale
    if HAS_SOFTCAP:
        u = 2.0 * tl.sigmoid(2.0 * (t / softcap)) - 1.0
        return u * softcap, scale * (1.0 - u * u)
    return t, scale + 0.0 * t


@triton.jit
def atwu_coefficient(nll, score, population, n_forget, n_retain, alpha, gamma, beta, SCORE_SATURATION: tl.constexpr):
    """``c = −γ g e^(−β_eff ℓ)/N_F`` (forget), ``α/N_R`` (retain), 0 otherwise; ``β_eff = β g`` or ``β``."""
    if SCORE_SATURATION:
        exponent = beta * score
    else:
        exponent = beta + 0.0 * score
    forget_c = -gamma * score * tl.exp(-exponent * nll) / n_forget
    retain_c = alpha / n_retain + 0.0 * score
    return tl.where(population == 1, forget_c, tl.where(population == 2, retain_c, 0.0))


@triton.jit
def row_coefficients(
    rows,
    valid,
    nll,
    given_ptr,
    scores_ptr,
    population_ptr,
    counts_ptr,
    alpha,
    gamma,
    beta,
    COEFF: tl.constexpr,
    SCORE_SATURATION: tl.constexpr,
):
    """Row coefficients (0 on ignored rows) from a given vector or the ATWU rule."""
    if COEFF == 1:
        c = tl.load(given_ptr + rows, mask=valid, other=0.0).to(tl.float32)
    else:
        score = tl.load(scores_ptr + rows, mask=valid, other=0.0).to(tl.float32)
        population = tl.load(population_ptr + rows, mask=valid, other=0).to(tl.int32)
        n_forget = tl.load(counts_ptr).to(tl.float32)
        n_retain = tl.load(counts_ptr + 1).to(tl.float32)
        c = atwu_coefficient(nll, score, population, n_forget, n_retain, alpha, gamma, beta, SCORE_SATURATION)
    return tl.where(valid, c, 0.0)


@triton.jit(do_not_specialize=["n_rows", "n_cols", "ignore_index"])
def _rows_kernel(
    z_ptr,
    stride_z,
    labels_ptr,
    lse_ptr,
    nll_ptr,
    coeff_ptr,
    given_ptr,
    scores_ptr,
    population_ptr,
    counts_ptr,
    n_rows,
    n_cols,
    ignore_index,
    scale,
    softcap,
    alpha,
    gamma,
    beta,
    HAS_SOFTCAP: tl.constexpr,
    STATS: tl.constexpr,
    COEFF: tl.constexpr,
    SCORE_SATURATION: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    valid = row_ok & (labels != ignore_index)
    z_rows = z_ptr + rows[:, None] * stride_z
    if STATS:
        running_max = tl.full((BLOCK_R,), NEG_BIG, tl.float32)
        running_sum = tl.zeros((BLOCK_R,), tl.float32)
        target = tl.zeros((BLOCK_R,), tl.float32)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
            mask = row_ok[:, None] & (cols < n_cols)[None, :]
            z = tl.load(z_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            t, _ = transformed(z, scale, softcap, HAS_SOFTCAP)
            t = tl.where(mask, t, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(t, axis=1))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(t - new_max[:, None]), axis=1)
            running_max = new_max
            target += tl.sum(tl.where(cols[None, :] == labels[:, None], t, 0.0), axis=1)
        lse = running_max + tl.log(tl.where(row_ok, running_sum, 1.0))
        nll = tl.where(valid, lse - target, 0.0)
        tl.store(lse_ptr + rows, lse, mask=row_ok)
        tl.store(nll_ptr + rows, nll, mask=row_ok)
    else:
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        nll = tl.zeros((BLOCK_R,), tl.float32)
    if COEFF != 0:
        c = row_coefficients(
            rows,
            valid,
            nll,
            given_ptr,
            scores_ptr,
            population_ptr,
            counts_ptr,
            alpha,
            gamma,
            beta,
            COEFF,
            SCORE_SATURATION,
        )
        tl.store(coeff_ptr + rows, c, mask=row_ok)
        if GRAD:
            lse = tl.where(row_ok, lse, 0.0)  # padding rows: keep exp finite
            for start in range(0, n_cols, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
                mask = row_ok[:, None] & (cols < n_cols)[None, :]
                offsets = z_rows + cols[None, :]
                z = tl.load(offsets, mask=mask, other=0.0).to(tl.float32)
                t, dt_dz = transformed(z, scale, softcap, HAS_SOFTCAP)
                onehot = tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
                grad = c[:, None] * (tl.exp(t - lse[:, None]) - onehot) * dt_dz
                tl.store(offsets, grad.to(z_ptr.dtype.element_ty), mask=mask)


GPU_ROW_TILES = (4, 2048, 8)  # (BLOCK_R, BLOCK_V, num_warps): 32 fp32 values per thread per tile


def _blocks(n_cols: int) -> tuple[int, int, int]:
    """The interpreter's cost is per program: big tiles there (the tests also run the GPU tiles)."""
    if triton_interpreting():
        return 32, min(2048, triton.next_power_of_2(max(n_cols, 16))), 4
    return GPU_ROW_TILES


def coefficient_args(coefficients, rows: slice, like: torch.Tensor) -> dict:
    """Kernel arguments for the coefficient mode (dummy pointers where a mode reads nothing)."""
    if coefficients is None:
        return dict(
            COEFF=COEFF_NONE,
            given=like,
            scores=like,
            population=like,
            counts=like,
            alpha=0.0,
            gamma=0.0,
            beta=0.0,
            score_saturation=False,
        )
    if isinstance(coefficients, torch.Tensor):
        given = coefficients[rows].to(torch.float32).contiguous()
        return dict(
            COEFF=COEFF_GIVEN,
            given=given,
            scores=like,
            population=like,
            counts=like,
            alpha=0.0,
            gamma=0.0,
            beta=0.0,
            score_saturation=False,
        )
    assert isinstance(coefficients, AtwuCoefficients)
    k = coefficients.kernel_args
    return dict(
        COEFF=COEFF_ATWU,
        given=like,
        scores=k["scores"][rows],
        population=k["population"][rows],
        counts=k["counts"],
        alpha=k["alpha"],
        gamma=k["gamma"],
        beta=k["beta"],
        score_saturation=k["score_saturation"],
    )


assert (FORGET, RETAIN) == (1, 2)  # the codes atwu_coefficient tests


def run_rows(
    z, labels, transform: LogitTransform, ignore_index: int, *, lse=None, coefficients=None, rows=None, write_grad=False
):
    """Launch :func:`_rows_kernel`; returns ``(lse, nll, coeff)`` (``nll`` is None when ``lse`` was given)."""
    n_rows, vocab = z.shape
    assert z.stride(1) == 1, "logits chunk must be row-major"
    device = z.device
    stats = lse is None
    if stats:
        lse = torch.empty(n_rows, dtype=torch.float32, device=device)
        nll = torch.empty(n_rows, dtype=torch.float32, device=device)
    else:
        lse, nll = lse.contiguous(), None
    coeff = torch.empty(n_rows, dtype=torch.float32, device=device) if coefficients is not None else None
    if n_rows == 0:
        return lse, nll, coeff
    args = coefficient_args(coefficients, rows if rows is not None else slice(None), lse)
    block_r, block_v, num_warps = _blocks(vocab)
    _rows_kernel[(triton.cdiv(n_rows, block_r),)](
        z,
        z.stride(0),
        labels,
        lse,
        nll if nll is not None else lse,
        coeff if coeff is not None else lse,
        args["given"],
        args["scores"],
        args["population"],
        args["counts"],
        n_rows,
        vocab,
        ignore_index,
        transform.scale_or_one,
        transform.softcap_or_one,
        args["alpha"],
        args["gamma"],
        args["beta"],
        HAS_SOFTCAP=transform.softcap is not None,
        STATS=stats,
        COEFF=args["COEFF"],
        SCORE_SATURATION=args["score_saturation"],
        GRAD=write_grad,
        BLOCK_R=block_r,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return lse, nll, coeff


class TritonRowOps:
    """The row-ops contract of :class:`~atwu_kernels.torch_impl.TorchRowOps`, one kernel per call."""

    name = "triton"

    @staticmethod
    def workspace(rows, vocab, device):
        return None  # the kernel keeps its temporaries in registers

    @staticmethod
    def chunk_stats(z, labels, valid, transform, ignore_index, workspace=None):
        lse, nll, _ = run_rows(z, labels, transform, ignore_index)
        return lse, nll

    @staticmethod
    def chunk_coeff_grad_(
        z, labels, valid, transform, ignore_index, lse, nll, coefficients, rows, write_grad, workspace=None
    ):
        assert isinstance(coefficients, torch.Tensor), "a coefficient rule needs the statistics pass"
        return run_rows(
            z, labels, transform, ignore_index, lse=lse, coefficients=coefficients, rows=rows, write_grad=write_grad
        )[2]

    @staticmethod
    def chunk_stats_coeff_grad_(
        z, labels, valid, transform, ignore_index, coefficients, rows, write_grad, workspace=None
    ):
        return run_rows(z, labels, transform, ignore_index, coefficients=coefficients, rows=rows, write_grad=write_grad)
