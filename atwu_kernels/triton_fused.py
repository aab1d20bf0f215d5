"""Fused Triton GEMM path (``impl="triton_fused"``): the softmax lives inside the GEMMs.

Per chunk of ``C`` rows (``P`` = tile width of the logits GEMM, ``s`` = bytes per element):

1. :func:`_logits_kernel` — ``Z = H Wᵀ (+b)`` tile by tile; the epilogue transforms each
   ``[BM, P]`` tile (``t = cap·tanh(scale·z/cap)``), keeps the row's running max / sum-exp /
   target logit (online log-sum-exp over this program's share of the vocabulary) and, when
   gradients follow, stores ``E = exp(t − m)`` with ``m`` the tile's row max (``[C, V]`` in the
   compute dtype) and ``m`` itself (``[C, V/P]`` fp32; P = 128 on GPU). ``Z`` is never stored and
   the log-sum-exp needs no pass of its own: ``exp`` is computed once per logit.
2. :func:`_finish_kernel` — merges the per-split partial statistics into ``lse``, ``ℓ`` and the
   row coefficient ``c`` (given, or the ATWU rule of :func:`atwu_kernels.triton_impl.atwu_coefficient`).
3. :func:`_grad_hidden_kernel` and :func:`_grad_weight_kernel` — ``dH = G W`` and ``dW (+)= Gᵀ H``
   (``db`` too) where each ``G`` tile is formed from ``E`` as it is loaded::

       G = c·(E·e^(m − lse) − [v = y])·dt/dz      (dt/dz from t = m + log E when a cap is set)

   so ``G`` is never written, and no ``exp`` is repeated (one per row and tile for ``e^(m − lse)``;
   a ``log`` per element only with a cap): the per-element work is a load, a multiply, a compare
   and a cast. ``dW`` programs own their ``[BN, BD]`` tile and loop over all rows, so chunks
   accumulate without atomics (an fp32 buffer with several chunks, the parameter dtype with one).

FLOPs and bytes (``N`` rows, logits traffic; ``H``, ``W`` reads are GEMM operand traffic):

* loss with gradients (weighted CE, ATWU head): ``6·N·D·V`` FLOPs; ``E`` written once and read by
  the two gradient GEMMs: ``3·N·V·s`` bytes (cuBLAS path: ``6·N·V·s``).
* ``linear_token_nll``: forward ``2·N·D·V`` FLOPs and no logits traffic; backward recomputes the
  logits GEMM: ``6·N·D·V`` FLOPs, ``3·N·V·s`` bytes.

The gradient GEMMs redo the ``E → G`` prologue once per ``D``-tile of their output (``D/BD``
times per element): ≈ 5 ALU ops per element each time, about ``80/BD`` of the tensor-core time on
an H100/H200-class GPU (128 FP32 ops vs 4096 dense bf16 FLOPs per SM per clock) — hidden only as
far as the pipeline overlaps it. Expected H200 time at M=4096, D=4096, V=128256 bf16, if the GEMMs
reach 600 TFLOP/s: 6·MDV/600 TFLOP/s = 21.5 ms + ≈ 0.7 ms of logits traffic; whether Triton's
GEMMs reach that here is what ``benchmarks/gpu_check.py`` measures against the cuBLAS path.

Interpreter (TRITON_INTERPRET=1): operands are upcast to fp32 after ``tl.load`` (``UPCAST``),
since bf16 ``tl.dot`` is wrong there; fp32 ``tl.dot`` is exact there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunked import Plan, SweepResult
from .interpreter import triton_interpreting
from .triton_impl import NEG_BIG, coefficient_args, row_coefficients, transformed


@triton.jit(do_not_specialize=["n_rows", "n_cols", "dim", "tiles_per_split"])
def _logits_kernel(
    h_ptr,
    stride_h,
    w_ptr,
    stride_w,
    b_ptr,
    e_ptr,
    stride_e,
    m_ptr,
    stride_m,
    labels_ptr,
    pmax_ptr,
    psum_ptr,
    ptarget_ptr,
    n_rows,
    n_cols,
    dim,
    tiles_per_split,
    scale,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    STATS: tl.constexpr,
    TARGET: tl.constexpr,
    STORE: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    running_max = tl.full((BM,), NEG_BIG, tl.float32)
    running_sum = tl.zeros((BM,), tl.float32)
    target = tl.zeros((BM,), tl.float32)
    n_tiles = tl.cdiv(n_cols, BN)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, n_tiles)
    for tile in range(first_tile, last_tile):
        cols = tile * BN + tl.arange(0, BN).to(tl.int64)
        col_ok = cols < n_cols
        acc = tl.zeros((BM, BN), tl.float32)
        for k in range(0, dim, BK):
            ks = k + tl.arange(0, BK).to(tl.int64)
            k_ok = ks < dim
            a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + cols[:, None] * stride_w + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        t, _ = transformed(acc, scale, softcap, HAS_SOFTCAP)
        mask = row_ok[:, None] & col_ok[None, :]
        t = tl.where(mask, t, NEG_BIG)
        tile_max = tl.max(t, axis=1)
        e = tl.exp(t - tile_max[:, None])
        if STORE:
            tl.store(e_ptr + rows[:, None] * stride_e + cols[None, :], e.to(e_ptr.dtype.element_ty), mask=mask)
            tl.store(m_ptr + rows * stride_m + tile, tile_max, mask=row_ok)
        if STATS:
            new_max = tl.maximum(running_max, tile_max)
            tile_sum = tl.sum(tl.where(mask, e, 0.0), axis=1)
            running_sum = running_sum * tl.exp(running_max - new_max) + tile_sum * tl.exp(tile_max - new_max)
            running_max = new_max
        if STATS or TARGET:
            target += tl.sum(tl.where(cols[None, :] == labels[:, None], t, 0.0), axis=1)
    offsets = split * n_rows + rows
    if STATS:
        tl.store(pmax_ptr + offsets, running_max, mask=row_ok)
        tl.store(psum_ptr + offsets, running_sum, mask=row_ok)
    if STATS or TARGET:
        tl.store(ptarget_ptr + offsets, target, mask=row_ok)


@triton.jit(do_not_specialize=["n_splits", "n_rows", "ignore_index"])
def _finish_kernel(
    pmax_ptr,
    psum_ptr,
    ptarget_ptr,
    n_splits,
    labels_ptr,
    lse_ptr,
    nll_ptr,
    coeff_ptr,
    target_dt_ptr,
    given_ptr,
    scores_ptr,
    population_ptr,
    counts_ptr,
    n_rows,
    ignore_index,
    scale,
    softcap,
    alpha,
    gamma,
    beta,
    STATS: tl.constexpr,
    TARGET_DT: tl.constexpr,
    COEFF: tl.constexpr,
    SCORE_SATURATION: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    valid = row_ok & (labels != ignore_index)
    nll = tl.zeros((BLOCK_R,), tl.float32)
    target = tl.zeros((BLOCK_R,), tl.float32)
    for s in range(0, n_splits):
        target += tl.load(ptarget_ptr + s * n_rows + rows, mask=row_ok, other=0.0)
    if TARGET_DT:  # dt/dz at the label's capped logit t_y = softcap·u
        u = target / softcap
        tl.store(target_dt_ptr + rows, scale * (1.0 - u * u), mask=row_ok)
    if STATS:
        top = tl.full((BLOCK_R,), NEG_BIG, tl.float32)
        for s in range(0, n_splits):
            top = tl.maximum(top, tl.load(pmax_ptr + s * n_rows + rows, mask=row_ok, other=NEG_BIG))
        total = tl.zeros((BLOCK_R,), tl.float32)
        for s in range(0, n_splits):
            part_max = tl.load(pmax_ptr + s * n_rows + rows, mask=row_ok, other=NEG_BIG)
            total += tl.load(psum_ptr + s * n_rows + rows, mask=row_ok, other=0.0) * tl.exp(part_max - top)
        lse = top + tl.log(tl.where(row_ok, total, 1.0))
        nll = tl.where(valid, lse - target, 0.0)
        tl.store(lse_ptr + rows, lse, mask=row_ok)
        tl.store(nll_ptr + rows, nll, mask=row_ok)
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


@triton.jit
def _grad_tile(
    e_ptr,
    stride_e,
    m_ptr,
    stride_m,
    rows,
    cols,
    tile,
    row_ok,
    col_ok,
    labels,
    lse,
    c,
    dt_target,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
):
    """``G = c·(p·dt/dz − [v = y]·dt/dz(t_y))`` for one ``[BM, BN]`` tile (fp32, 0 outside).

    ``p = E·e^(m − lse)``. With a cap, ``dt/dz`` of the other columns comes from
    ``t = m + log E`` (only where ``p > 0`` does it matter), the label's from its exact ``t_y``.
    """
    mask = row_ok[:, None] & col_ok[None, :]
    e = tl.load(e_ptr + rows[:, None] * stride_e + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + rows * stride_m + tile, mask=row_ok, other=0.0)
    onehot = cols[None, :] == labels[:, None]
    p_scaled = e * (c * tl.exp(m - lse))[:, None]
    if HAS_SOFTCAP:
        u = (m[:, None] + tl.log(tl.where(e > 0.0, e, 1.0))) / softcap
        g = p_scaled * (scale * (1.0 - u * u)) - tl.where(onehot, (c * dt_target)[:, None], 0.0)
    else:
        g = (p_scaled - tl.where(onehot, c[:, None], 0.0)) * scale
    return tl.where(mask, g, 0.0)


@triton.jit(do_not_specialize=["n_rows", "n_cols", "dim"])
def _grad_hidden_kernel(
    e_ptr,
    stride_e,
    m_ptr,
    stride_m,
    w_ptr,
    stride_w,
    labels_ptr,
    lse_ptr,
    coeff_ptr,
    target_dt_ptr,
    dh_ptr,
    stride_dh,
    n_rows,
    n_cols,
    dim,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    TILES_PER_P: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < n_rows
    ds = pid_d * BD + tl.arange(0, BD).to(tl.int64)
    d_ok = ds < dim
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    c = tl.load(coeff_ptr + rows, mask=row_ok, other=0.0)
    dt_target = tl.load(target_dt_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BM, BD), tl.float32)
    for v0 in range(0, n_cols, BN):
        cols = v0 + tl.arange(0, BN).to(tl.int64)
        col_ok = cols < n_cols
        g = _grad_tile(
            e_ptr,
            stride_e,
            m_ptr,
            stride_m,
            rows,
            cols,
            v0 // (BN * TILES_PER_P),
            row_ok,
            col_ok,
            labels,
            lse,
            c,
            dt_target,
            scale,
            softcap,
            HAS_SOFTCAP,
        )
        w = tl.load(w_ptr + cols[:, None] * stride_w + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            w = w.to(tl.float32)
        else:
            g = g.to(w.dtype)
        acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
    out = dh_ptr + rows[:, None] * stride_dh + ds[None, :]
    tl.store(out, acc.to(dh_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["n_rows", "n_cols", "dim"])
def _grad_weight_kernel(
    e_ptr,
    stride_e,
    m_ptr,
    stride_m,
    h_ptr,
    stride_h,
    labels_ptr,
    lse_ptr,
    coeff_ptr,
    target_dt_ptr,
    dw_ptr,
    stride_dw,
    db_ptr,
    n_rows,
    n_cols,
    dim,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    WANT_DW: tl.constexpr,
    WANT_DB: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    TILES_PER_P: tl.constexpr,
):
    pid_v = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    cols = pid_v * BN + tl.arange(0, BN).to(tl.int64)
    col_ok = cols < n_cols
    ds = pid_d * BD + tl.arange(0, BD).to(tl.int64)
    d_ok = ds < dim
    tile = pid_v // TILES_PER_P
    acc = tl.zeros((BN, BD), tl.float32)
    dbias = tl.zeros((BN,), tl.float32)
    for m0 in range(0, n_rows, BM):
        rows = m0 + tl.arange(0, BM).to(tl.int64)
        row_ok = rows < n_rows
        labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        c = tl.load(coeff_ptr + rows, mask=row_ok, other=0.0)
        dt_target = tl.load(target_dt_ptr + rows, mask=row_ok, other=0.0)
        g = _grad_tile(
            e_ptr,
            stride_e,
            m_ptr,
            stride_m,
            rows,
            cols,
            tile,
            row_ok,
            col_ok,
            labels,
            lse,
            c,
            dt_target,
            scale,
            softcap,
            HAS_SOFTCAP,
        )
        if WANT_DB:
            dbias += tl.sum(g, axis=0)
        if WANT_DW:
            h = tl.load(h_ptr + rows[:, None] * stride_h + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                h = h.to(tl.float32)
            else:
                g = g.to(h.dtype)
            acc = tl.dot(tl.trans(g), h, acc, input_precision=DOT_PRECISION)
    if WANT_DW:
        out = dw_ptr + cols[:, None] * stride_dw + ds[None, :]
        out_mask = col_ok[:, None] & d_ok[None, :]
        if ACCUMULATE:
            acc += tl.load(out, mask=out_mask, other=0.0).to(tl.float32)
        tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=out_mask)
    if WANT_DB:
        bias_mask = col_ok & ((cols * 0 + pid_d) == 0)
        tl.store(db_ptr + cols, tl.load(db_ptr + cols, mask=bias_mask, other=0.0) + dbias, mask=bias_mask)


# Tile sizes. ``P`` is the logits tile width (the granularity of the stored row maxima ``m``); the
# gradient GEMMs walk the vocabulary in ``BN`` columns, a divisor of ``P``. GPU (untuned): logits
# acc 128×128 fp32 = 64 registers/thread at 8 warps; gradients acc 64×256 (BD = 256 keeps the
# prologue recompute at D/256 per element), operand tiles ≤ 32 KB per stage. The interpreter's cost
# is per program, so it gets big tiles; the tests also run the GPU tiles under it.
GPU_TILES = dict(BM=128, P=128, BK=64, BN=64, BD=256, BM_W=64, warps=8, stages=3)
# fp32 operands take twice the shared memory per tile: GPU_TILES would ask for up to 289 KB per
# block (dH, TF32), beyond sm_90's 227 KB and sm_80's 163 KB, and be refused at launch. Half the K
# and D tiles and two stages: ≤ 128 KB (ptxas/Triton figures in tests/kernels/test_kernels_compile.py).
GPU_TILES_FP32 = dict(BM=128, P=128, BK=32, BN=64, BD=128, BM_W=64, warps=8, stages=2)
INTERPRETER_TILES = dict(BM=64, P=128, BK=64, BN=64, BD=64, BM_W=64, warps=4, stages=1)


def _configs(dtype: torch.dtype = torch.bfloat16) -> dict:
    if triton_interpreting():
        return INTERPRETER_TILES
    return GPU_TILES_FP32 if dtype == torch.float32 else GPU_TILES


def _dot_precision(dtype: torch.dtype) -> str | None:
    """fp32 operands: exact (``ieee``) unless torch allows TF32; others: Triton's default (tensor cores)."""
    if triton_interpreting():
        return "ieee"
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return None


def _max_splits(device: torch.device, n_m: int) -> int:
    """Vocabulary splits of the logits GEMM: enough programs to fill the GPU twice over (2 under
    the interpreter, so that the merge of partial statistics is exercised)."""
    if device.type != "cuda":
        return 2
    return triton.cdiv(2 * torch.cuda.get_device_properties(device).multi_processor_count, max(n_m, 1))


def _splits(n_tiles: int, max_splits: int) -> tuple[int, int]:
    """(splits, tiles per split) for ``n_tiles`` vocabulary tiles: at most ``max_splits``, none empty."""
    per_split = triton.cdiv(n_tiles, max(1, min(max_splits, n_tiles)))
    return triton.cdiv(n_tiles, per_split), per_split


def sweep(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    plan: Plan,
    lse: torch.Tensor | None = None,
    coefficients=None,
    want_grad_hidden: bool = False,
    want_grad_weight: bool = False,
    want_grad_bias: bool = False,
    grad_dtypes: tuple[torch.dtype, torch.dtype] | None = None,
) -> SweepResult:
    """Same contract as :func:`atwu_kernels.chunked.sweep`, on the fused Triton GEMMs."""
    cfg = _configs(hidden.dtype)
    n_rows, dim = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight.contiguous()
    hidden_dtype, weight_dtype = grad_dtypes or (hidden.dtype, weight.dtype)
    want_grad = coefficients is not None and (want_grad_hidden or want_grad_weight or want_grad_bias)
    stats = lse is None
    softcap = plan.transform.softcap is not None
    scale, cap = plan.transform.scale_or_one, plan.transform.softcap_or_one
    f32 = dict(dtype=torch.float32, device=device)

    if stats:
        lse, nll = torch.empty(n_rows, **f32), torch.empty(n_rows, **f32)
    else:
        nll = None
    coeff = torch.empty(n_rows, **f32) if coefficients is not None else None
    target_dt = torch.empty(n_rows, **f32) if (want_grad and softcap) else None
    chunk = max(1, min(plan.chunk_size, n_rows))
    n_chunks = triton.cdiv(n_rows, chunk)
    n_tiles = triton.cdiv(vocab, cfg["P"])
    n_m = triton.cdiv(chunk, cfg["BM"])
    splits, per_split = _splits(n_tiles, _max_splits(device, n_m))
    partials = torch.empty(3, splits, chunk, **f32)
    e_buf = torch.empty(chunk, vocab, dtype=hidden.dtype, device=device) if want_grad else None
    m_buf = torch.empty(chunk, n_tiles, **f32) if want_grad else None
    grad_hidden = (
        torch.empty(n_rows, dim, dtype=hidden_dtype, device=device) if want_grad and want_grad_hidden else None
    )
    grad_weight = None
    if want_grad and want_grad_weight:
        make = torch.zeros if n_rows == 0 else torch.empty
        grad_weight = make(vocab, dim, dtype=weight_dtype if n_chunks == 1 else torch.float32, device=device)
    grad_bias = torch.zeros(vocab, **f32) if want_grad and want_grad_bias else None
    dummy = partials
    common = dict(UPCAST=triton_interpreting(), DOT_PRECISION=_dot_precision(hidden.dtype))
    launch = dict(num_warps=cfg["warps"], num_stages=cfg["stages"])

    for index, start in enumerate(range(0, n_rows, chunk)):
        rows = slice(start, min(start + chunk, n_rows))
        count = rows.stop - rows.start
        h, y = hidden[rows], labels[rows]
        if not (stats or want_grad):
            break
        _logits_kernel[(triton.cdiv(count, cfg["BM"]), splits)](
            h, h.stride(0), weight, weight.stride(0), bias if bias is not None else dummy,
            e_buf if want_grad else dummy, vocab, m_buf if want_grad else dummy, n_tiles, y,
            partials[0], partials[1], partials[2], count, vocab, dim, per_split, scale, cap,
            HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap, STATS=stats, TARGET=want_grad and softcap,
            STORE=want_grad, BM=cfg["BM"], BN=cfg["P"], BK=cfg["BK"], **common, **launch,
        )  # fmt: skip
        args = coefficient_args(coefficients, rows, dummy)
        if stats or coefficients is not None:
            _finish_kernel[(triton.cdiv(count, 128),)](
                partials[0], partials[1], partials[2], splits, y, lse[rows] if stats else dummy,
                nll[rows] if stats else dummy, coeff[rows] if coeff is not None else dummy,
                target_dt[rows] if target_dt is not None else dummy, args["given"], args["scores"],
                args["population"], args["counts"], count, plan.ignore_index, scale, cap, args["alpha"],
                args["gamma"], args["beta"], STATS=stats, TARGET_DT=target_dt is not None, COEFF=args["COEFF"],
                SCORE_SATURATION=args["score_saturation"], BLOCK_R=128,
            )  # fmt: skip
        if not want_grad:
            continue
        grad_args = (e_buf, vocab, m_buf, n_tiles)
        row_stats = (y, lse[rows], coeff[rows], target_dt[rows] if target_dt is not None else dummy)
        tiles_per_p = cfg["P"] // cfg["BN"]
        if grad_hidden is not None:
            out = grad_hidden[rows]
            _grad_hidden_kernel[(triton.cdiv(count, cfg["BM"]), triton.cdiv(dim, cfg["BD"]))](
                *grad_args, weight, weight.stride(0), *row_stats, out, out.stride(0), count, vocab, dim, scale, cap,
                HAS_SOFTCAP=softcap, BM=cfg["BM"], BN=cfg["BN"], BD=cfg["BD"], TILES_PER_P=tiles_per_p, **common,
                **launch,
            )  # fmt: skip
        if grad_weight is not None or grad_bias is not None:
            bd = cfg["BD"] if grad_weight is not None else triton.next_power_of_2(16)
            grid_d = triton.cdiv(dim, cfg["BD"]) if grad_weight is not None else 1
            _grad_weight_kernel[(triton.cdiv(vocab, cfg["BN"]), grid_d)](
                *grad_args, h, h.stride(0), *row_stats, grad_weight if grad_weight is not None else dummy, dim,
                grad_bias if grad_bias is not None else dummy, count, vocab, dim, scale, cap, HAS_SOFTCAP=softcap,
                WANT_DW=grad_weight is not None, WANT_DB=grad_bias is not None, ACCUMULATE=index > 0,
                BM=cfg["BM_W"], BN=cfg["BN"], BD=bd, TILES_PER_P=tiles_per_p, **common, **launch,
            )  # fmt: skip

    if grad_weight is not None:
        grad_weight = grad_weight.to(weight_dtype)
    return SweepResult(lse, nll, coeff, grad_hidden, grad_weight, grad_bias)
