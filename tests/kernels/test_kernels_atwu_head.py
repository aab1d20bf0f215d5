"""The fused ATWU head vs a float64 reference (loss, all gradients, scorer gradient)."""

from __future__ import annotations

import pytest
import torch
from helpers import IGNORE, IMPLS, as64, assert_close, make_problem, reference_atwu

from atwu_kernels import atwu_head, linear_token_nll


def _scorer(d, seed, dev, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(d, generator=gen) * scale).to(dev), (torch.randn((), generator=gen) * scale).to(dev)


def _forget_mask(shape, seed, p=0.5):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


def _check_head(
    impl,
    n,
    d,
    v,
    *,
    chunk=32,
    forget_p=0.5,
    ignore_every=5,
    bias=False,
    softcap=None,
    logit_scale=None,
    lead=None,
    seed=0,
    **kw,
):
    hidden, weight, labels, b = make_problem(n, d, v, seed=seed, bias=bias, ignore_every=ignore_every, lead=lead)
    is_forget = _forget_mask(labels.shape, seed + 100, forget_p).to(labels.device)
    sw, sb = _scorer(d, seed + 200, hidden.device)
    hparams = dict(alpha=0.9, gamma=4.65, beta=7.37) | kw
    out = atwu_head(
        hidden,
        weight,
        labels,
        is_forget,
        sw,
        sb,
        bias=b,
        softcap=softcap,
        logit_scale=logit_scale,
        chunk_size=chunk,
        impl=impl,
        **hparams,
    )
    (out.loss * 1.7).backward()  # a non-unit scalar upstream gradient

    h64, w64, b64 = as64(hidden), as64(weight), as64(b)
    loss, nll, g, reward, gw, gb = reference_atwu(
        h64, w64, labels, is_forget, sw, sb, bias=b64, softcap=softcap, logit_scale=logit_scale, **hparams
    )
    (loss * 1.7).backward()
    assert_close(out.loss, loss, what="loss")
    assert_close(out.nll, nll.reshape(labels.shape), what="nll")
    assert_close(out.scores, g.reshape(labels.shape), what="scores")
    assert_close(out.reward, reward.reshape(labels.shape), what="reward")
    assert_close(out.scorer_grad_w, gw, what="scorer grad w")
    assert_close(out.scorer_grad_b, gb, what="scorer grad b")
    assert_close(hidden.grad, h64.grad, what="grad hidden")
    assert_close(weight.grad, w64.grad, what="grad weight")
    if bias:
        assert_close(b.grad, b64.grad, what="grad bias")
    for t in (out.nll, out.scores, out.reward, out.scorer_grad_w, out.scorer_grad_b):
        assert not t.requires_grad
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n, d, v, chunk", [(53, 16, 211, 16), (150, 32, 1500, 64)])
def test_head_matches_reference(impl, n, d, v, chunk):
    _check_head(impl, n, d, v, chunk=chunk)


@pytest.mark.parametrize("impl", IMPLS)
def test_head_bias_softcap_scale_raw_saturation(impl):
    _check_head(impl, 70, 24, 400, bias=True, softcap=3.0, logit_scale=0.8, saturation="raw", seed=4, reward_beta=2.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("forget_p", [0.0, 1.0])
def test_head_single_population(impl, forget_p):
    out = _check_head(impl, 40, 16, 150, forget_p=forget_p, seed=6)
    if forget_p == 0.0:
        assert torch.equal(out.reward, torch.zeros_like(out.reward)) and out.scorer_grad_w.abs().sum() == 0
    else:
        assert out.loss.item() < 0  # pure forget term: −γ·mean(g·p^(βg)·ℓ)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("saturation", ["score", "raw"])
def test_head_score_scale_rescales_only_the_model_loss(impl, saturation):
    """score_scale c: the model loss uses min(1, c·g) (c = 1.9 clips some g at 1); scores, reward and
    the scorer gradient keep the raw g (checked against the reference inside _check_head)."""
    out = _check_head(impl, 60, 16, 200, seed=9, score_scale=1.9, saturation=saturation, beta=0.5)
    plain = _check_head(impl, 60, 16, 200, seed=9, saturation=saturation, beta=0.5)
    assert torch.equal(out.scores, plain.scores) and torch.equal(out.reward, plain.reward)
    assert not torch.allclose(out.loss, plain.loss)


def test_head_batched_and_given_population_sizes():
    _check_head("torch", None, 16, 123, lead=(3, 9), seed=8, n_forget=50.0, n_retain=torch.tensor(21.0))


@pytest.mark.parametrize("impl", IMPLS)
def test_head_all_ignored(impl):
    hidden, weight, labels, _ = make_problem(30, 16, 64, seed=1)
    labels = torch.full_like(labels, IGNORE)
    sw, sb = _scorer(16, 1, hidden.device)
    out = atwu_head(hidden, weight, labels, _forget_mask(labels.shape, 0).to(labels.device), sw, sb, impl=impl)
    out.loss.backward()
    assert out.loss.item() == 0.0
    for t in (hidden.grad, weight.grad, out.scorer_grad_w, out.scorer_grad_b, out.nll, out.reward):
        assert torch.isfinite(t).all() and t.abs().sum() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_head_equals_composition_with_token_nll(impl):
    """The fused loss and gradients equal autograd through linear_token_nll + the ATWU formula."""
    hidden, weight, labels, _ = make_problem(77, 16, 300, seed=12, ignore_every=4)
    is_forget = _forget_mask(labels.shape, 3).to(labels.device)
    sw, sb = _scorer(16, 2, hidden.device)
    out = atwu_head(hidden, weight, labels, is_forget, sw, sb, alpha=1.0, gamma=1.0, beta=5.0, impl=impl, chunk_size=20)
    out.loss.backward()
    fused = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None

    nll = linear_token_nll(hidden, weight, labels, impl=impl, chunk_size=20)
    valid = labels != IGNORE
    forget, retain = is_forget & valid, ~is_forget & valid
    g = torch.sigmoid(hidden.detach() @ sw + sb)
    sat = torch.exp(-5.0 * g * nll.detach())
    loss = (nll * retain).sum() / retain.sum() - (g * sat * nll * forget).sum() / forget.sum()
    loss.backward()
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[0], hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused[1], weight.grad, rtol=1e-5, atol=1e-7)


def test_head_score_hidden_and_frozen_weight():
    hidden, weight, labels, _ = make_problem(33, 16, 90, seed=13)
    weight.requires_grad_(False)
    score_hidden = torch.randn(33, 16).to(hidden.device)
    sw, sb = _scorer(16, 5, hidden.device)
    is_forget = _forget_mask(labels.shape, 9).to(hidden.device)
    out = atwu_head(hidden, weight, labels, is_forget, sw, sb, score_hidden=score_hidden)
    out.loss.backward()
    assert weight.grad is None and hidden.grad is not None
    torch.testing.assert_close(out.scores, torch.sigmoid(score_hidden @ sw + sb))
    _, _, _, _, gw, _ = reference_atwu(
        as64(score_hidden), as64(weight), labels, is_forget, sw, sb, alpha=1.0, gamma=1.0, beta=5.0
    )
    # scorer gradient uses score_hidden rows but the reward from the model's own nll
    nll = out.nll.double()
    g = out.scores.double()
    forget = is_forget & (labels != IGNORE)
    reward = nll * torch.exp(-5.0 * g * nll) * forget
    expected = -((reward * g * (1 - g)) @ score_hidden.double()) / forget.sum()
    assert_close(out.scorer_grad_w, expected, what="scorer grad w with score_hidden")
    assert gw.shape == expected.shape


def test_head_rejects_bad_saturation():
    hidden, weight, labels, _ = make_problem(4, 8, 10)
    sw, sb = _scorer(8, 0, hidden.device)
    with pytest.raises(ValueError):
        atwu_head(hidden, weight, labels, _forget_mask(labels.shape, 0).to(hidden.device), sw, sb, saturation="soft")


@pytest.mark.parametrize("impl", IMPLS)
def test_head_with_given_scores_as_a_one_column_score_hidden(impl):
    """Fixed per-token scores g enter the head as score_hidden = logit(g) (one column), weight [1],
    bias 0 (how ATWU's score_from 'target' uses it): scores, loss and gradients equal those of the
    saturated loss with those g."""
    hidden, weight, labels, _ = make_problem(37, 16, 90, seed=21, ignore_every=6)
    is_forget = _forget_mask(labels.shape, 4).to(hidden.device)
    g = torch.rand(37, generator=torch.Generator().manual_seed(3)).clamp(0.05, 0.95).to(hidden.device)
    column = torch.logit(g).unsqueeze(1)
    out = atwu_head(hidden, weight, labels, is_forget, torch.ones(1, device=hidden.device),
                    torch.zeros((), device=hidden.device), score_hidden=column, alpha=0.8, gamma=2.0, beta=1.5,
                    impl=impl, chunk_size=16)
    out.loss.backward()
    torch.testing.assert_close(out.scores, g, rtol=1e-6, atol=1e-6)
    h64, w64 = as64(hidden).requires_grad_(True), as64(weight).requires_grad_(True)
    nll = torch.nn.functional.cross_entropy(h64 @ w64.T, labels, reduction="none", ignore_index=IGNORE)
    valid = labels != IGNORE
    forget, retain = (is_forget & valid).double(), (~is_forget & valid).double()
    g64 = g.double()
    sat = torch.exp(-1.5 * g64 * nll.detach())
    loss = 0.8 * (nll * retain).sum() / retain.sum() - 2.0 * (g64 * sat * nll * forget).sum() / forget.sum()
    loss.backward()
    assert_close(out.loss.double(), loss, what="loss with given scores")
    assert_close(hidden.grad.double(), h64.grad, what="hidden grad with given scores")
    assert_close(weight.grad.double(), w64.grad, what="weight grad with given scores")
