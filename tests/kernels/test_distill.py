"""linear_distillation, both backends (``"torch"``; ``"triton"`` under the interpreter off CUDA), against
a float64 reference with materialised logits: per-token loss, the student NLL, and the gradients of
hidden / weight / bias under a non-uniform upstream gradient, within first-order bounds of fp32
arithmetic. fp32 inputs only: the interpreter's bf16 arithmetic is not the GPU's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FP32_U, IGNORE, assert_within, triton_available

from atwu_kernels.distill import linear_distillation

NEEDS_TRITON = pytest.mark.skipif(not triton_available(), reason="needs CUDA or TRITON_INTERPRET=1")
IMPLS = ["torch", pytest.param("triton", marks=NEEDS_TRITON)]
TRANSFORMS = [(None, None, False), (3.0, None, True), (None, 0.5, False), (2.0, 1.5, True)]  # softcap, scale, bias


def _dev():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference(h, w, b, th, tw, tb, y, shift, softcap=None, scale=None):
    def logits(hh, ww, bb):
        z = hh @ ww.T + (0 if bb is None else bb)
        if scale is not None:
            z = z * scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        return z

    z = logits(h, w, b)
    u = logits(th, tw, tb).detach().clone()
    valid = y != IGNORE
    yy = torch.where(valid, y, 0)
    u[torch.arange(len(y)), yy] -= shift
    q = torch.softmax(u, -1)
    logp = torch.log_softmax(z, -1)
    loss = -(q * logp).sum(-1) * valid
    nll = -logp.gather(1, yy[:, None])[:, 0] * valid
    return loss, nll


def fp32_bounds(h, w, b, th, tw, tb, y, shift, softcap, scale, upstream):
    """First-order bounds on |fp32 result − float64 result| for inputs exactly representable in fp32
    (``h, w, b, th, tw, tb`` their float64 values, ``upstream`` the float64 upstream gradient).
    ``u`` is the fp32 unit roundoff. Error sources, in the order the ops meet them:

    * raw logits, an fp32 GEMM (+ bias): ``δr ≤ (D+1)·u·(|H||W|ᵀ + |b|)``;
    * the transform ``t = c·tanh(s·r/c)`` is ``s``-Lipschitz; its own roundings (scale, divide,
      tanh as ``2σ(2x) − 1``, multiply) a few ulps of ``|s·r|`` or, near 0, of ``c``:
      ``δt ≤ s·δr + 8u·(|s·r| + c)``; the same for the teacher's ``δa``;
    * log-sum-exp (1-Lipschitz in the max norm): ``Δlse ≤ max δ + (V+2)·u + u·|lse|``;
    * probabilities: ``|Δp| ≤ p·(e^(δt+Δlse) − 1 + 4u)``, ``|Δq|`` likewise from ``δa``;
    * loss ``lse(t) − Σ q t``: ``Δlse_t + Σ q·δt + Σ |Δq||t| + V·u·Σ q|t| + u·|loss|``;
      NLL ``lse(t) − t_y``: ``Δlse_t + δt_y + u·|nll|``;
    * ``G_t = c(p − q)`` (``c`` the upstream gradient, rounded to fp32): ``|c|(|Δp| + |Δq|) + 3u|G_t|``;
      through ``dt/dz = s(1 − tanh²)`` (capped; else the exact ``s``), whose error is at most
      ``2s·|tanh|·(s·δr/c + 4u) + 4u·s``: ``ΔG ≤ ΔG_t·|dt/dz| + |G_t|·Δ(dt/dz) + u|G|``;
    * ``dH = G W``, ``dW = Gᵀ H``, ``db = Σ G``: ``|ΔG|`` through ``|W|``/``|H|`` plus the fp32
      accumulation (``(K+1)·u`` of the absolute product, ``K`` the summed length).

    Each bound is doubled for the second-order terms a first-order sum leaves out.
    """
    u_ = FP32_U
    n, d = h.shape
    v = w.shape[0]
    s = 1.0 if scale is None else scale
    cap = 0.0 if softcap is None else softcap
    valid = y != IGNORE
    yy = torch.where(valid, y, 0)

    def transformed(hh, ww, bb):
        r = hh @ ww.T + (0.0 if bb is None else bb)
        dr = (d + 1) * u_ * (hh.abs() @ ww.abs().T + (0.0 if bb is None else bb.abs()))
        t = s * r if softcap is None else softcap * torch.tanh(s * r / softcap)
        return r, t, s * dr + 8 * u_ * ((s * r).abs() + cap), dr

    r, t, dt, dr = transformed(h, w, b)
    _, a, da, _ = transformed(th, tw, tb)
    a = a.clone()
    a[torch.arange(n), yy] -= shift
    lse_t, lse_a = t.logsumexp(-1), a.logsumexp(-1)
    d_lse_t = dt.max(-1).values + (v + 2) * u_ + u_ * lse_t.abs()
    d_lse_a = da.max(-1).values + (v + 2) * u_ + u_ * lse_a.abs()
    p, q = torch.softmax(t, -1), torch.softmax(a, -1)
    d_p = p * (torch.expm1(dt + d_lse_t[:, None]) + 4 * u_)
    d_q = q * (torch.expm1(da + d_lse_a[:, None]) + 4 * u_)
    loss = lse_t - (q * t).sum(-1)
    nll = lse_t - t.gather(1, yy[:, None])[:, 0]
    d_loss = d_lse_t + (q * dt).sum(-1) + (d_q * t.abs()).sum(-1) + v * u_ * (q * t.abs()).sum(-1) + u_ * loss.abs()
    d_nll = d_lse_t + dt.gather(1, yy[:, None])[:, 0] + u_ * nll.abs()
    c = (upstream * valid)[:, None]
    g_t = c * (p - q)
    d_g_t = c.abs() * (d_p + d_q) + 3 * u_ * g_t.abs()
    if softcap is None:
        deriv, d_deriv = torch.full_like(t, s), torch.zeros_like(t)
    else:
        tanh = torch.tanh(s * r / softcap)
        deriv = s * (1 - tanh**2)
        d_deriv = 2 * s * tanh.abs() * (s * dr / softcap + 4 * u_) + 4 * u_ * s
    g = g_t * deriv
    d_g = d_g_t * deriv.abs() + g_t.abs() * d_deriv + u_ * g.abs()
    bounds = dict(
        loss=d_loss * valid,
        nll=d_nll * valid,
        hidden=d_g @ w.abs() + (v + 1) * u_ * (g.abs() @ w.abs()),
        weight=d_g.T @ h.abs() + (n + 1) * u_ * (g.abs().T @ h.abs()),
        bias=d_g.sum(0) + (n + 1) * u_ * g.abs().sum(0),
    )
    return {k: 2 * x for k, x in bounds.items()}


def problem(n, d, v, *, seed, bias, ignored=(3,)):
    """fp32 leaves on the test device and their float64 twins, teacher tensors, labels, upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    h, w = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    b = torch.randn(v, generator=g) if bias else None
    th, tw = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    tb = torch.randn(v, generator=g) if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    y[list(ignored)] = IGNORE
    upstream = torch.rand(n, generator=g, dtype=torch.float64) * 2  # not uniform: a row-scaling bug shows
    dev = _dev()
    leaf = lambda t: None if t is None else t.to(dev).requires_grad_()  # noqa: E731
    as64 = lambda t: None if t is None else t.double().requires_grad_()  # noqa: E731
    const = lambda t: None if t is None else t.to(dev)  # noqa: E731
    return dict(
        fp32=(leaf(h), leaf(w), leaf(b), const(th), const(tw), const(tb), y.to(dev)),
        fp64=(as64(h), as64(w), as64(b), th.double(), tw.double(), None if tb is None else tb.double(), y),
        upstream=upstream,
    )


def check_against_float64(impl, softcap, scale, with_bias, chunk, shift, n=11, d=6, v=37, seed=0):
    pr = problem(n, d, v, seed=seed, bias=with_bias)
    h, w, b, th, tw, tb, y = pr["fp32"]
    h64, w64, b64, th64, tw64, tb64, y64 = pr["fp64"]
    upstream = pr["upstream"]
    loss, nll = linear_distillation(
        h,
        w,
        th,
        tw,
        y,
        shift=shift,
        bias=b,
        teacher_bias=tb,
        softcap=softcap,
        logit_scale=scale,
        chunk_size=chunk,
        impl=impl,
    )
    assert loss.dtype == nll.dtype == torch.float32 and loss.shape == nll.shape == y.shape
    ref_loss, ref_nll = reference(h64, w64, b64, th64, tw64, tb64, y64, shift, softcap, scale)
    bounds = fp32_bounds(
        h64.detach(),
        w64.detach(),
        None if b64 is None else b64.detach(),
        th64,
        tw64,
        tb64,
        y64,
        shift,
        softcap,
        scale,
        upstream,
    )
    assert_within(loss.cpu(), ref_loss, bounds["loss"], what="loss")
    assert_within(nll.cpu(), ref_nll, bounds["nll"], what="nll")
    params = [("hidden", h, h64), ("weight", w, w64)] + ([("bias", b, b64)] if with_bias else [])
    got = torch.autograd.grad((loss.cpu().double() * upstream).sum(), [p for _, p, _ in params])
    want = torch.autograd.grad((ref_loss * upstream).sum(), [p for _, _, p in params])
    for (name, _, _), a, e in zip(params, got, want):
        assert a.dtype == torch.float32
        assert_within(a.cpu(), e, bounds[name], what=f"grad {name}")
        assert e.abs().max() > 1e-3
    assert loss[3] == 0 and nll[3] == 0
    assert (got[0][3] == 0).all()  # an ignored row gets no gradient


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("softcap, scale, with_bias", TRANSFORMS)
@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("shift", [0.0, 2.5])
def test_loss_nll_and_gradients_match_float64(impl, softcap, scale, with_bias, chunk, shift):
    check_against_float64(impl, softcap, scale, with_bias, chunk, shift)


@NEEDS_TRITON
@pytest.mark.parametrize("tiles, v", [("gpu", 1100), ((2, 8, 1), 37)])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_triton_tiles_cross_the_vocabulary(monkeypatch, tiles, v, softcap):
    """The GPU tile sizes (4 rows × 1024 columns: V=1100 takes two tiles, the second partial) and
    tiny tiles (many tiles per row: the online maxima move), under the interpreter where fp32 is exact."""
    from atwu_kernels import triton_distill

    tiles = triton_distill.GPU_DISTILL_TILES if tiles == "gpu" else tiles
    monkeypatch.setattr(triton_distill, "_blocks", lambda n_cols: tiles)
    check_against_float64("triton", softcap, None, True, 5, 3.0, n=9, d=8, v=v, seed=4)


@pytest.mark.parametrize("impl", IMPLS)
def test_shift_moves_the_target_off_the_label(impl):
    """With the student equal to the teacher, the loss without a shift is the teacher's entropy and its
    gradient vanishes; a shift gives a positive gradient on the label's logit (pushes it down)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 4, generator=g).to(_dev()).requires_grad_()
    w = torch.randn(9, 4, generator=g).to(_dev()).requires_grad_()
    y = torch.randint(0, 9, (5,), generator=g).to(_dev())
    loss, _ = linear_distillation(h, w, h.detach(), w.detach(), y, shift=0.0, impl=impl)
    (gw,) = torch.autograd.grad(loss.sum(), [w])
    assert gw.abs().max() < 1e-5
    loss, _ = linear_distillation(h, w, h.detach(), w.detach(), y, shift=5.0, impl=impl)
    (gz,) = torch.autograd.grad(loss.sum(), [h])
    assert gz.abs().max() > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_no_grad_and_the_default_backend(impl):
    """Without gradients only the forward runs; ``impl=None`` is the device's default backend."""
    pr = problem(6, 5, 20, seed=2, bias=True)
    h, w, b, th, tw, tb, y = pr["fp32"]
    with torch.no_grad():
        loss, nll = linear_distillation(h, w, th, tw, y, shift=1.0, bias=b, teacher_bias=tb, impl=impl)
    assert not loss.requires_grad
    default = "triton" if _dev().type == "cuda" else "torch"
    if impl == default:
        again, again_nll = linear_distillation(h, w, th, tw, y, shift=1.0, bias=b, teacher_bias=tb)
        assert torch.equal(again.detach(), loss) and torch.equal(again_nll, nll)


@NEEDS_TRITON
def test_triton_runs_outside_autocast():
    """Its backward reuses the forward's log-sum-exps, so both recompute the logits in the same dtype:
    under autocast the result is the one without it, forward and backward."""
    pr = problem(6, 5, 20, seed=3, bias=False)
    h, w, _, th, tw, _, y = pr["fp32"]
    results = []
    for enabled in (False, True):
        with torch.autocast(_dev().type, dtype=torch.bfloat16, enabled=enabled):
            loss, _ = linear_distillation(h, w, th, tw, y, shift=2.0, impl="triton")
            results.append((loss, *torch.autograd.grad(loss.sum(), [h, w])))
    for a, e in zip(*results):
        assert a.dtype == e.dtype == torch.float32 and torch.equal(a, e)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_labels_are_refused(impl):
    h, w = torch.randn(3, 4, device=_dev()), torch.randn(5, 4, device=_dev())
    with pytest.raises(IndexError, match="out of range"):
        linear_distillation(h, w, h, w, torch.tensor([0, 5, 1], device=_dev()), impl=impl)


def test_bad_impl_names_raise(monkeypatch):
    h, w, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2])
    for impl in ("triton_fused", "cuda", "Torch"):
        with pytest.raises(ValueError, match=r"impl must be one of \('torch', 'triton'\) or None"):
            linear_distillation(h, w, h, w, y, impl=impl)
    from atwu_kernels import dispatch

    monkeypatch.setattr(dispatch, "triton_interpreting", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        linear_distillation(h, w, h, w, y, impl="triton")  # a CPU tensor without the interpreter


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from atwu_kernels import triton_distill
sig = dict(z_ptr="*bf16", stride_z="i64", u_ptr="*bf16", stride_u="i64", labels_ptr="*i64", valid_ptr="*fp32",
           coeff_ptr="*fp32", lse_z_ptr="*fp32", lse_q_ptr="*fp32", loss_ptr="*fp32", nll_ptr="*fp32",
           n_rows="i32", n_cols="i32", shift="fp32", scale="fp32", softcap="fp32")
block_r, block_v, warps = triton_distill.GPU_DISTILL_TILES
for stats, grad in ((True, False), (False, True)):
    for cap in (False, True):
        consts = dict(HAS_SOFTCAP=cap, STATS=stats, GRAD=grad, BLOCK_R=block_r, BLOCK_V=block_v)
        kernel = triton.compile(ASTSource(triton_distill._distill_rows_kernel, sig, consts),
                                target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
        assert kernel.asm["ptx"]
print("ok")
"""


def test_row_kernel_compiles_for_a_gpu():
    """The interpreter runs kernels as Python and misses what only the compiler rejects (a non-constexpr
    global, say): compile the row kernel for sm_90 (no GPU needed) in a process without the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=Path(__file__).resolve().parent,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
