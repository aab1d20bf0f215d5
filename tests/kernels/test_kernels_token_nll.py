"""linear_token_nll and weighted_linear_cross_entropy vs a float64 materialised-logits oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    BF16_U,
    IGNORE,
    IMPLS,
    TOKEN_NLL_PATHS,
    as64,
    assert_close,
    assert_within,
    bf16_gemm_bounds,
    make_problem,
    reference_nll,
)

from atwu_kernels import kept, linear_token_nll, weighted_linear_cross_entropy


@pytest.fixture(autouse=True)
def narrow_kept_blocks(monkeypatch):
    """Kept logits in blocks of 37 columns, so every problem here with V > 37 spans several blocks
    (labels in the first, a middle and the last, partial block)."""
    monkeypatch.setattr(kept, "block_columns", lambda vocab: min(vocab, 37))


def _grads(*tensors):
    return [None if t is None else t.grad for t in tensors]


def _check_token_nll(
    impl,
    keep,
    n,
    d,
    v,
    *,
    chunk,
    bias=False,
    softcap=None,
    logit_scale=None,
    ignore_every=5,
    lead=None,
    hidden_scale=1.0,
    seed=0,
    rtol=1e-4,
):
    hidden, weight, labels, b = make_problem(
        n, d, v, seed=seed, bias=bias, ignore_every=ignore_every, lead=lead, hidden_scale=hidden_scale
    )
    upstream = torch.rand(labels.shape, generator=torch.Generator().manual_seed(seed + 1)).to(hidden.device) * 3 - 1
    nll = linear_token_nll(
        hidden, weight, labels, bias=b, softcap=softcap, logit_scale=logit_scale, chunk_size=chunk, impl=impl,
        keep_logits=keep,
    )  # fmt: skip
    assert nll.shape == labels.shape and nll.dtype == torch.float32
    (nll * upstream).sum().backward()

    h64, w64, b64 = as64(hidden), as64(weight), as64(b)
    ref = reference_nll(h64, w64, labels, b64, softcap, logit_scale)
    (ref * upstream.double()).sum().backward()
    assert_close(nll, ref, rtol=rtol, what="nll")
    assert torch.all(nll[labels == IGNORE] == 0)
    for name, got, want in zip(("hidden", "weight", "bias"), _grads(hidden, weight, b), _grads(h64, w64, b64)):
        if want is not None:
            assert_close(got, want, rtol=rtol, what=f"grad {name}")


@pytest.mark.parametrize("impl, keep", TOKEN_NLL_PATHS)
@pytest.mark.parametrize(
    "n, d, v, chunk",
    [(1, 16, 17, 4), (47, 31, 123, 16), (130, 64, 1000, 64), (200, 24, 2100, 1024)],
)
def test_token_nll_matches_float64_reference(impl, keep, n, d, v, chunk):
    _check_token_nll(impl, keep, n, d, v, chunk=chunk)


@pytest.mark.parametrize("impl, keep", TOKEN_NLL_PATHS)
@pytest.mark.parametrize("softcap, logit_scale, bias", [(2.0, None, False), (None, 0.37, True), (5.0, 1.7, True)])
def test_token_nll_transforms_and_bias(impl, keep, softcap, logit_scale, bias):
    _check_token_nll(impl, keep, 61, 32, 517, chunk=32, softcap=softcap, logit_scale=logit_scale, bias=bias, seed=3)


@pytest.mark.parametrize("impl, keep", TOKEN_NLL_PATHS)
def test_token_nll_batched_input(impl, keep):
    _check_token_nll(impl, keep, None, 16, 301, chunk=7, lead=(3, 11), ignore_every=4, seed=5)


@pytest.mark.parametrize("impl, keep", TOKEN_NLL_PATHS)
def test_token_nll_huge_logits(impl, keep):
    """Logits around ±1e4 must not overflow the softmax (online max subtraction)."""
    hidden, weight, labels, _ = make_problem(40, 16, 200, seed=7, hidden_scale=2500.0)
    z = (hidden @ weight.t()).detach()
    assert z.abs().max() > 5e3
    _check_token_nll(impl, keep, 40, 16, 200, chunk=16, hidden_scale=2500.0, seed=7, rtol=1e-4)


@pytest.mark.parametrize("impl, keep", TOKEN_NLL_PATHS)
def test_all_ignored_batch_is_finite_zero(impl, keep):
    hidden, weight, labels, _ = make_problem(20, 16, 50, seed=1)
    labels = torch.full_like(labels, IGNORE)
    nll = linear_token_nll(hidden, weight, labels, impl=impl, chunk_size=8, keep_logits=keep)
    (nll * 2.0).sum().backward()
    assert torch.equal(nll, torch.zeros_like(nll))
    assert torch.equal(hidden.grad, torch.zeros_like(hidden)) and torch.equal(weight.grad, torch.zeros_like(weight))
    hidden.grad = weight.grad = None
    loss = weighted_linear_cross_entropy(hidden, weight, labels, impl=impl)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


def test_empty_input():
    hidden, weight, labels, _ = make_problem(0, 8, 10)
    nll = linear_token_nll(hidden, weight, labels)
    nll.sum().backward()
    assert nll.shape == (0,) and weight.grad.abs().sum() == 0


@pytest.mark.parametrize("impl, keep", TOKEN_NLL_PATHS)
def test_bf16_inputs_within_bf16_bounds(impl, keep):
    """bf16 leaves: gradients come back in bf16, within the bf16 error bounds plus the final rounding
    of each gradient to bf16 (≤ 2u of its value: round to nearest, or truncation under the interpreter)."""
    hidden, weight, labels, _ = make_problem(64, 32, 300, seed=2, ignore_every=6, dtype=torch.bfloat16)
    upstream = torch.rand(labels.shape).to(hidden.device) * 2 - 0.5
    nll = linear_token_nll(hidden, weight, labels, impl=impl, chunk_size=32, keep_logits=keep)
    (nll * upstream).sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    h64, w64 = as64(hidden), as64(weight)  # bf16 values, exactly
    ref = reference_nll(h64, w64, labels)
    (ref * upstream.double()).sum().backward()
    bounds = bf16_gemm_bounds(h64.detach(), w64.detach(), None, labels, upstream.double() * (labels != IGNORE))
    assert_within(nll, ref, bounds["nll"], "nll")
    for name, got, want in (("hidden", hidden.grad, h64.grad), ("weight", weight.grad, w64.grad)):
        assert_within(got, want, bounds[f"grad_{name}"] + 2 * BF16_U * want.abs(), f"grad {name}")


def test_implementations_agree():
    pytest.importorskip("triton")
    from helpers import triton_available

    if not triton_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    results = []
    for impl in ("torch", "triton"):
        hidden, weight, labels, b = make_problem(90, 32, 700, seed=11, bias=True, ignore_every=3)
        nll = linear_token_nll(hidden, weight, labels, bias=b, softcap=4.0, impl=impl, chunk_size=40)
        (nll * torch.linspace(-1, 2, 90).to(nll.device)).sum().backward()
        results.append((nll.detach(), hidden.grad, weight.grad, b.grad))
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ weighted cross-entropy


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_cross_entropy(impl, reduction):
    hidden, weight, labels, _ = make_problem(None, 24, 333, seed=4, ignore_every=4, lead=(4, 13))
    weights = torch.rand(labels.shape).to(hidden.device) * 2
    out = weighted_linear_cross_entropy(hidden, weight, labels, weights, reduction=reduction, softcap=3.0, impl=impl)
    upstream = torch.rand(out.shape).to(out.device) + 0.5
    (out * upstream).sum().backward()

    h64, w64 = as64(hidden), as64(weight)
    nll = reference_nll(h64, w64, labels, softcap=3.0)
    valid = labels != IGNORE
    weighted = nll * weights.double() * valid
    ref = {"none": weighted, "sum": weighted.sum(), "mean": weighted.sum() / (weights.double() * valid).sum()}[
        reduction
    ]
    (ref * upstream.double()).sum().backward()
    assert out.shape == ref.shape
    assert_close(out, ref, what="loss")
    assert_close(hidden.grad, h64.grad, what="grad hidden")
    assert_close(weight.grad, w64.grad, what="grad weight")


@pytest.mark.parametrize("impl", IMPLS)
def test_weighted_cross_entropy_default_weights_is_plain_mean(impl):
    hidden, weight, labels, _ = make_problem(50, 16, 100, seed=9, ignore_every=7)
    loss = weighted_linear_cross_entropy(hidden, weight, labels, impl=impl)
    expected = F.cross_entropy((hidden @ weight.t()).double(), labels, ignore_index=IGNORE)
    assert_close(loss, expected, what="mean loss")


def test_weighted_cross_entropy_zero_weights_gives_zero_not_nan():
    hidden, weight, labels, _ = make_problem(12, 8, 30, seed=2)
    loss = weighted_linear_cross_entropy(hidden, weight, labels, torch.zeros(12))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(hidden.grad).all()


def test_no_grad_call_skips_gradients():
    hidden, weight, labels, _ = make_problem(12, 8, 30, seed=2)
    with torch.no_grad():
        loss = weighted_linear_cross_entropy(hidden, weight, labels)
    assert not loss.requires_grad
    assert_close(loss, F.cross_entropy((hidden @ weight.t()).double(), labels), what="no-grad loss")


def test_bad_arguments_raise():
    hidden, weight, labels, _ = make_problem(12, 8, 30)
    with pytest.raises(ValueError):
        linear_token_nll(hidden, weight, labels[:5])
    with pytest.raises(ValueError):
        weighted_linear_cross_entropy(hidden, weight, labels, reduction="avg")
    with pytest.raises(ValueError):
        linear_token_nll(hidden, weight, labels, impl="cuda")
