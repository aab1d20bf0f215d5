"""fp32 parameters under ``torch.autocast(<device>, dtype=torch.bfloat16)`` (CPU here; CUDA runs the
same code): GEMMs in bf16, statistics in fp32, gradients in each input's own dtype. Checked against
a float64 reference on the bf16-rounded operands, within bounds derived from bf16 arithmetic."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    IGNORE,
    IMPLS,
    as64,
    assert_within,
    bf16_gemm_bounds,
    bf16_round64,
    device,
    make_problem,
    reference_atwu,
)

from atwu_kernels import atwu_head, linear_token_nll, weighted_linear_cross_entropy

DEVICE = device()
AMP = dict(device_type=DEVICE.type, dtype=torch.bfloat16)


def _rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def _reference_nll(h, w, b, labels):
    z = h @ w.t() + (0.0 if b is None else b)
    return torch.nn.functional.cross_entropy(z, labels, reduction="none", ignore_index=IGNORE)


def _check_grads(bounds, hidden, weight, b, h64, w64, b64):
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    assert_within(hidden.grad, h64.grad, bounds["grad_hidden"], "grad hidden")
    assert_within(weight.grad, w64.grad, bounds["grad_weight"], "grad weight")
    if b is not None:
        assert b.grad.dtype == torch.float32
        assert_within(b.grad, b64.grad, bounds["grad_bias"], "grad bias")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("backward_in_autocast", [True, False])
def test_token_nll_under_autocast(impl, backward_in_autocast):
    hidden, weight, labels, b = make_problem(75, 32, 400, seed=3, bias=True, ignore_every=6)
    upstream = _rand(labels.shape, 4) * 3 - 1
    with torch.autocast(**AMP):
        nll = linear_token_nll(hidden, weight, labels, bias=b, impl=impl, chunk_size=32)
        if backward_in_autocast:
            (nll * upstream).sum().backward()
    if not backward_in_autocast:
        (nll * upstream).sum().backward()
    assert nll.dtype == torch.float32

    h64, w64, b64 = (bf16_round64(t).requires_grad_() for t in (hidden, weight, b))
    ref = _reference_nll(h64, w64, b64, labels)
    (ref * upstream.double()).sum().backward()
    bounds = bf16_gemm_bounds(h64.detach(), w64.detach(), b64.detach(), labels, upstream.double() * (labels != IGNORE))
    assert_within(nll, ref, bounds["nll"], "nll")
    _check_grads(bounds, hidden, weight, b, h64, w64, b64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_cross_entropy_under_autocast(impl, reduction):
    hidden, weight, labels, _ = make_problem(90, 24, 333, seed=5, ignore_every=4)
    weights = _rand(labels.shape, 6) * 2
    with torch.autocast(**AMP):
        loss = weighted_linear_cross_entropy(
            hidden, weight, labels, weights, reduction=reduction, impl=impl, chunk_size=40
        )
        loss.backward()
    assert loss.dtype == torch.float32

    h64, w64 = bf16_round64(hidden).requires_grad_(), bf16_round64(weight).requires_grad_()
    valid = labels != IGNORE
    w_valid = weights.double() * valid
    coeff = w_valid / w_valid.sum() if reduction == "mean" else w_valid
    nll = _reference_nll(h64, w64, None, labels)
    ref = (coeff * nll).sum()
    ref.backward()
    bounds = bf16_gemm_bounds(h64.detach(), w64.detach(), None, labels, coeff)
    assert_within(loss, ref, (coeff.abs() * bounds["nll"]).sum(), "loss")
    _check_grads(bounds, hidden, weight, None, h64, w64, None)


@pytest.mark.parametrize("impl", IMPLS)
def test_atwu_head_under_autocast(impl):
    hidden, weight, labels, b = make_problem(80, 32, 300, seed=7, bias=True, ignore_every=5)
    is_forget = _rand(labels.shape, 8) < 0.5
    gen = torch.Generator().manual_seed(9)
    sw, sb = (torch.randn(32, generator=gen) * 0.3).to(DEVICE), (torch.randn((), generator=gen) * 0.3).to(DEVICE)
    hparams = dict(alpha=0.9, gamma=2.5, beta=3.0)
    with torch.autocast(**AMP):
        out = atwu_head(hidden, weight, labels, is_forget, sw, sb, bias=b, impl=impl, chunk_size=32, **hparams)
        out.loss.backward()
    assert out.loss.dtype == torch.float32 and out.nll.dtype == torch.float32

    # the scorer reads the fp32 hidden states (no GEMM operand rounding there)
    _, _, g, _, _, _ = reference_atwu(as64(hidden), as64(weight), labels, is_forget, sw, sb, bias=as64(b), **hparams)
    torch.testing.assert_close(out.scores, g.float(), rtol=0, atol=8 * 2.0**-24 * (1 + 32))
    h64, w64, b64 = (bf16_round64(t).requires_grad_() for t in (hidden, weight, b))
    nll = _reference_nll(h64, w64, b64, labels)
    valid = labels != IGNORE
    forget, retain = is_forget & valid, ~is_forget & valid
    g = g.detach()
    sat = torch.exp(-hparams["beta"] * g * nll.detach())
    coeff = torch.where(
        forget, -hparams["gamma"] * g * sat / forget.sum(), torch.where(retain, hparams["alpha"] / retain.sum(), 0.0)
    )
    loss = (coeff * nll).sum()
    loss.backward()
    # c depends on ℓ through e^(−βgℓ): |Δc| ≤ |c|·(e^(βg·Δℓ) − 1)
    first = bf16_gemm_bounds(h64.detach(), w64.detach(), b64.detach(), labels, coeff.detach())
    d_coeff = torch.where(forget, coeff.abs() * torch.expm1(hparams["beta"] * g * first["nll"]), 0.0)
    bounds = bf16_gemm_bounds(h64.detach(), w64.detach(), b64.detach(), labels, coeff.detach(), d_coeff=d_coeff)
    assert_within(out.nll, nll, bounds["nll"], "nll")
    loss_bound = (coeff.abs() * bounds["nll"] + d_coeff * (nll.detach().abs() + bounds["nll"])).sum()
    assert_within(out.loss, loss, loss_bound, "loss")
    _check_grads(bounds, hidden, weight, b, h64, w64, b64)


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_inside_or_outside_autocast_is_the_same(impl):
    """The backward runs with autocast disabled: where it is called cannot change a bit."""
    grads = []
    for inside in (True, False):
        hidden, weight, labels, _ = make_problem(40, 16, 120, seed=11)
        with torch.autocast(**AMP):
            nll = linear_token_nll(hidden, weight, labels, impl=impl, chunk_size=16)
            if inside:
                nll.sum().backward()
        if not inside:
            nll.sum().backward()
        grads.append((hidden.grad, weight.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_autocast_does_not_change_results_outside_it():
    """Without autocast the fp32 path is untouched by the autocast machinery."""
    hidden, weight, labels, _ = make_problem(30, 16, 90, seed=12)
    plain = weighted_linear_cross_entropy(hidden, weight, labels)
    with torch.autocast(**AMP, enabled=False):
        disabled = weighted_linear_cross_entropy(hidden, weight, labels)
    assert torch.equal(plain, disabled)
