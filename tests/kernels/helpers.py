"""Float64 materialised-logits references and shared fixtures for the atwu_kernels tests."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

IGNORE = -100


def triton_available() -> bool:
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


IMPLS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="needs CUDA or TRITON_INTERPRET=1")),
]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_problem(n, d, v, *, seed=0, ignore_every=0, bias=False, dtype=torch.float32, hidden_scale=1.0, lead=None):
    """Random ``hidden [.., D]``, ``weight [V, D]``, ``labels``, optional ``bias`` (leaf tensors)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if lead is None else tuple(lead)
    hidden = torch.randn(*shape, d, generator=gen) * hidden_scale
    weight = torch.randn(v, d, generator=gen) / d**0.5
    labels = torch.randint(0, v, shape, generator=gen)
    if ignore_every:
        labels.view(-1)[::ignore_every] = IGNORE
    b = torch.randn(v, generator=gen) if bias else None
    dev = device()
    leaf = lambda t: None if t is None else t.to(dev, dtype).requires_grad_()  # noqa: E731
    return leaf(hidden), leaf(weight), labels.to(dev), leaf(b)


def as64(t):
    return None if t is None else t.detach().to(torch.float64).requires_grad_()


def reference_logits(hidden, weight, bias=None, softcap=None, logit_scale=None):
    z = hidden @ weight.t()
    if bias is not None:
        z = z + bias
    if logit_scale is not None:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def reference_nll(hidden, weight, labels, bias=None, softcap=None, logit_scale=None):
    """Materialised per-token NLL (any dtype; use float64 leaves for the oracle)."""
    z = reference_logits(hidden.reshape(-1, hidden.shape[-1]), weight, bias, softcap, logit_scale)
    return F.cross_entropy(z, labels.reshape(-1), reduction="none", ignore_index=IGNORE).reshape(labels.shape)


def reference_atwu(
    hidden,
    weight,
    labels,
    is_forget,
    sw,
    sb,
    *,
    alpha,
    gamma,
    beta,
    saturation="score",
    reward_beta=None,
    bias=None,
    softcap=None,
    logit_scale=None,
    n_forget=None,
    n_retain=None,
    score_scale=None,
):
    """Float64 ATWU loss with autograd; returns (loss, nll, g, scorer_grad_w, scorer_grad_b).
    ``score_scale`` c: the model loss uses min(1, c·g), the reward and scorer gradient the raw g."""
    nll = reference_nll(hidden, weight, labels, bias, softcap, logit_scale).reshape(-1)
    valid = labels.reshape(-1) != IGNORE
    forget = is_forget.reshape(-1) & valid
    retain = ~is_forget.reshape(-1) & valid
    h2 = hidden.detach().reshape(-1, hidden.shape[-1])
    w = sw.detach().double().clone().requires_grad_()
    b = sb.detach().double().clone().requires_grad_()
    g_live = torch.sigmoid(h2 @ w + b)
    g = g_live.detach()
    n_f = forget.sum().double().clamp_min(1) if n_forget is None else torch.tensor(float(n_forget), dtype=torch.float64)
    n_r = retain.sum().double().clamp_min(1) if n_retain is None else torch.tensor(float(n_retain), dtype=torch.float64)
    p = torch.exp(-nll.detach())
    gm = g if score_scale is None else (g * float(score_scale)).clamp(max=1.0)
    sat = p ** (beta * gm) if saturation == "score" else p**beta
    loss = alpha * (nll * retain).sum() / n_r - gamma * (gm * sat * nll * forget).sum() / n_f
    rb = beta if reward_beta is None else reward_beta
    reward = (nll.detach() * torch.exp(-rb * g * nll.detach())) * forget
    scorer_obj = -(g_live * reward).sum() / n_f
    gw, gb = torch.autograd.grad(scorer_obj, (w, b))
    return loss, nll, g, reward, gw, gb


def assert_close(actual, expected, rtol=1e-4, atol_rel=1e-5, what=""):
    """``|a − e| ≤ rtol·|e| + atol_rel·(1 + max|e|)`` element-wise, compared in float64."""
    expected = expected.detach().double()
    actual = actual.detach().double().reshape(expected.shape)
    atol = atol_rel * (1.0 + expected.abs().max().item()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def relative_error(actual, expected) -> float:
    expected = expected.detach().double()
    diff = actual.detach().double().reshape(expected.shape) - expected
    return (diff.norm() / expected.norm().clamp_min(1e-30)).item()
