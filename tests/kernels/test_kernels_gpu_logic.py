"""Code that only runs on CUDA, run here so that it is not blind: the GPU tile sizes of both Triton
backends under the interpreter (fp32, where the interpreter is exact), the vocabulary split of
the fused logits GEMM, and the ``out_dtype`` GEMM accumulation of ``dW`` with those GEMMs emulated."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    BF16_U,
    FP32_U,
    IGNORE,
    as64,
    assert_close,
    make_problem,
    reference_atwu,
    reference_nll,
    triton_available,
)

from atwu_kernels import atwu_head, linear_token_nll, weighted_linear_cross_entropy

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.fixture(params=["GPU_TILES", "GPU_TILES_FP32"])
def gpu_tiles(monkeypatch, request):
    """The GPU tiles under the interpreter: the fused path's 16-bit tiles, then its fp32 tiles."""
    from atwu_kernels import triton_fused, triton_impl

    monkeypatch.setattr(triton_fused, "_configs", lambda dtype=None: getattr(triton_fused, request.param))
    monkeypatch.setattr(triton_impl, "_blocks", lambda n_cols: triton_impl.GPU_ROW_TILES)


# shapes that cross every GPU tile: the row kernel (4 rows × 2048 columns) gets V > 2048; the fused
# path gets N > BM = 128 (two row tiles), D > BD = 256 (two output tiles), V > P = 128, two chunks
SHAPES = {"triton": (9, 16, 2100, 5), "triton_fused": (130, 260, 200, 70)}


@pytest.mark.parametrize("impl", ["triton", "triton_fused"])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_gpu_tiles_token_nll(gpu_tiles, impl, softcap):
    n, d, v, chunk = SHAPES[impl]
    hidden, weight, labels, b = make_problem(n, d, v, seed=21, bias=True, ignore_every=6)
    upstream = torch.rand(labels.shape, generator=torch.Generator().manual_seed(22)).to(hidden.device) - 0.3
    nll = linear_token_nll(hidden, weight, labels, bias=b, softcap=softcap, chunk_size=chunk, impl=impl)
    (nll * upstream).sum().backward()
    h64, w64, b64 = as64(hidden), as64(weight), as64(b)
    ref = reference_nll(h64, w64, labels, b64, softcap)
    (ref * upstream.double()).sum().backward()
    assert_close(nll, ref, what="nll")
    for name, got, want in (
        ("hidden", hidden.grad, h64.grad),
        ("weight", weight.grad, w64.grad),
        ("bias", b.grad, b64.grad),
    ):
        assert_close(got, want, what=f"grad {name}")


@pytest.mark.parametrize("impl", ["triton", "triton_fused"])
def test_gpu_tiles_head_and_weighted_ce(gpu_tiles, impl):
    n, d, v, chunk = SHAPES[impl]
    hidden, weight, labels, _ = make_problem(n, d, v, seed=23, ignore_every=5)
    is_forget = (torch.rand(labels.shape, generator=torch.Generator().manual_seed(24)) < 0.5).to(labels.device)
    sw = (torch.randn(d, generator=torch.Generator().manual_seed(25)) * 0.05).to(labels.device)
    sb = torch.zeros((), device=labels.device)
    out = atwu_head(
        hidden, weight, labels, is_forget, sw, sb, alpha=0.8, gamma=2.0, beta=3.0, chunk_size=chunk, impl=impl
    )
    out.loss.backward()
    h64, w64 = as64(hidden), as64(weight)
    loss, nll, *_ = reference_atwu(h64, w64, labels, is_forget, sw, sb, alpha=0.8, gamma=2.0, beta=3.0)
    loss.backward()
    assert_close(out.loss, loss, what="loss")
    assert_close(out.nll, nll, what="nll")
    assert_close(hidden.grad, h64.grad, what="grad hidden")
    assert_close(weight.grad, w64.grad, what="grad weight")
    hidden.grad = weight.grad = None
    ce = weighted_linear_cross_entropy(hidden, weight, labels, impl=impl)
    expected = torch.nn.functional.cross_entropy(h64.detach() @ w64.detach().t(), labels, ignore_index=IGNORE)
    assert_close(ce, expected, what="mean CE")


def test_vocabulary_splits_cover_every_tile_once():
    from atwu_kernels.triton_fused import _splits

    assert _splits(1002, 9) == (9, 112)  # V=128256 at P=128 on 132 SMs with 32 row tiles
    for n_tiles in range(1, 200):
        for max_splits in range(1, 40):
            splits, per_split = _splits(n_tiles, max_splits)
            assert 1 <= splits <= max_splits and (splits - 1) * per_split < n_tiles <= splits * per_split


# ------------------------------------------------------------------------------- dW accumulation


class _EmulatedOutDtypeGemms:
    """``torch.mm``/``torch.addmm`` with ``out_dtype`` as CUDA has them: fp32 output of bf16 operands
    accumulated without an intermediate rounding (emulated in float64); records the calls."""

    def __init__(self, monkeypatch):
        from atwu_kernels import gemm_accumulate

        self.calls = []
        mm = torch.mm
        monkeypatch.setattr(gemm_accumulate, "fp32_output_gemm_supported", lambda *_: True)

        def fake_mm(a, b, *, out_dtype=None, out=None):
            self.calls.append(("mm", out_dtype, out is not None))
            if out_dtype is None:
                return mm(a, b, out=out) if out is not None else mm(a, b)
            result = (a.double() @ b.double()).to(out_dtype)
            return result if out is None else out.copy_(result)

        def fake_addmm(acc, a, b, *, out_dtype=None, out=None):
            self.calls.append(("addmm", out_dtype, out is acc))
            assert out_dtype is not None
            result = (acc.double() + a.double() @ b.double()).to(out_dtype)
            return result if out is None else out.copy_(result)

        monkeypatch.setattr(torch, "mm", fake_mm)
        monkeypatch.setattr(torch, "addmm", fake_addmm)


def _bf16_chunks(n_chunks, rows=24, v=40, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(rows, v, generator=gen).bfloat16(), torch.randn(rows, d, generator=gen).bfloat16())
        for _ in range(n_chunks)
    ]


@pytest.mark.parametrize(
    "n_chunks, out_dtype", [(1, torch.bfloat16), (1, torch.float32), (3, torch.bfloat16), (3, torch.float32)]
)
def test_weight_grad_accumulates_in_the_gemm(monkeypatch, n_chunks, out_dtype):
    from atwu_kernels.gemm_accumulate import WeightGradAccumulator

    gemms = _EmulatedOutDtypeGemms(monkeypatch)
    chunks = _bf16_chunks(n_chunks)
    acc = WeightGradAccumulator(torch.Size((40, 16)), torch.device("cpu"), out_dtype, n_chunks)
    for g, h in chunks:
        acc.add(g, h)
    result = acc.result()
    assert result.dtype == out_dtype
    if n_chunks == 1 and out_dtype == torch.bfloat16:
        assert gemms.calls == [("mm", None, False)]  # straight to the parameter dtype
    else:
        assert gemms.calls == [("mm", torch.float32, False)] + [("addmm", torch.float32, True)] * (n_chunks - 1)
    exact = sum(g.double().t() @ h.double() for g, h in chunks)
    magnitude = sum(g.double().abs().t() @ h.double().abs() for g, h in chunks)
    # fp32 accumulation only (no per-chunk bf16 product), then one rounding to the output dtype
    final = BF16_U if out_dtype == torch.bfloat16 else FP32_U
    bound = final * exact.abs() + (n_chunks + 1) * FP32_U * magnitude * (1 + final)
    assert ((result.double() - exact).abs() <= bound).all()


def test_hidden_grad_in_fp32_from_bf16_operands(monkeypatch):
    from atwu_kernels.gemm_accumulate import hidden_grad_into

    gemms = _EmulatedOutDtypeGemms(monkeypatch)
    ((g, _),) = _bf16_chunks(1)
    w = torch.randn(40, 16).bfloat16()
    out = torch.empty(24, 16)
    hidden_grad_into(out, g, w)
    assert gemms.calls == [("mm", torch.float32, True)]
    torch.testing.assert_close(out.double(), g.double() @ w.double(), rtol=FP32_U * 4, atol=0)


def test_fp32_output_gemms_are_not_claimed_off_cuda():
    from atwu_kernels.gemm_accumulate import fp32_output_gemm_supported

    assert fp32_output_gemm_supported("cpu", None) is False
