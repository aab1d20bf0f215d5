"""Float64 materialised-logits references and shared fixtures for the atwu_kernels tests."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

IGNORE = -100


def triton_available() -> bool:
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_NEEDS_TRITON = pytest.mark.skipif(not triton_available(), reason="needs CUDA or TRITON_INTERPRET=1")
IMPLS = ["torch", pytest.param("triton", marks=_NEEDS_TRITON), pytest.param("triton_fused", marks=_NEEDS_TRITON)]
# linear_token_nll's paths: the torch backend with its logits kept for backward (the CPU fp32
# default) and recomputed in backward, and each Triton backend (which always recomputes)
TOKEN_NLL_PATHS = [
    pytest.param("torch", True, id="torch-kept"),
    pytest.param("torch", False, id="torch-recomputed"),
    pytest.param("triton", None, marks=_NEEDS_TRITON, id="triton"),
    pytest.param("triton_fused", None, marks=_NEEDS_TRITON, id="triton_fused"),
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


# ----------------------------------------------------------------- low-precision GEMM operands

BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
FP32_U = 2.0**-24


def bf16_round64(t):
    """The float64 value of ``t`` rounded to bfloat16 (what autocast feeds the GEMMs)."""
    return None if t is None else t.detach().to(torch.bfloat16).double()


def bf16_gemm_bounds(h, w, b, labels, coeff, *, d_coeff=None):
    """First-order error bounds of the ops when the GEMM operands are bf16 (autocast or bf16 inputs).

    ``h, w, b`` are the float64 values of the bf16 operands, ``coeff`` the float64 row
    coefficients ``c_i`` (0 on ignored rows) and ``d_coeff`` a bound on their own error (the ATWU
    coefficients depend on ℓ). Error sources, ``u`` the bf16 and ``u₃₂`` the fp32 unit roundoff:

    * logits: rounded to bf16 after an fp32 GEMM: ``δ = u|z| + D·u₃₂·(|H||W|ᵀ + |b|)``;
    * log-sum-exp: ``Δlse ≤ max_v δ + (V+2)·u₃₂ + u₃₂·|lse|`` (lse is 1-Lipschitz in the max norm);
      ``Δℓ ≤ Δlse + δ_y``;
    * probabilities: ``|Δp| ≤ p·(e^(δ+Δlse) − 1 + 2u + 4u₃₂)`` (``2u``: a bf16-stored ``exp``);
    * ``G = c·(p − onehot)`` stored in bf16: ``|ΔG| ≤ |c||Δp| + 2u|G| + Δc·|p − onehot|``.
      A bf16 store rounds to nearest (``u``) in PyTorch and compiled Triton; the Triton
      interpreter truncates (``2u``), hence ``2u`` for values a kernel stores;
    * ``dH = G W``, ``dW = Gᵀ H``: ``|ΔG|`` through ``|W|``/``|H|``, the GEMMs' fp32 accumulation
      (``K·u₃₂`` of the absolute product) and a bf16 rounding of the product (``u`` of it).

    Each bound is multiplied by ``1 + 8u`` for the second-order terms the first-order sum leaves out.
    Returns float64 bounds ``dict(nll, grad_hidden, grad_weight, grad_bias, loss_terms)``.
    """
    n, d = h.shape
    v = w.shape[0]
    valid = labels != IGNORE
    abs_prod = h.abs() @ w.abs().t() + (0.0 if b is None else b.abs())
    z = h @ w.t() + (0.0 if b is None else b)
    delta = BF16_U * z.abs() + d * FP32_U * abs_prod
    lse = torch.logsumexp(z, dim=1)
    d_lse = delta.max(dim=1).values + (v + 2) * FP32_U + FP32_U * lse.abs()
    y = labels.clamp(0, v - 1)
    d_nll = torch.where(valid, d_lse + delta.gather(1, y[:, None])[:, 0], 0.0)
    p = torch.softmax(z, dim=1)
    onehot = torch.nn.functional.one_hot(y, v).double() * valid[:, None]
    g = coeff[:, None] * (p - onehot)
    d_p = p * (torch.expm1(delta + d_lse[:, None]) + 2 * BF16_U + 4 * FP32_U)
    d_g = coeff.abs()[:, None] * d_p + 2 * BF16_U * g.abs()
    if d_coeff is not None:
        d_g = d_g + d_coeff[:, None] * (p - onehot).abs()
    second_order = 1 + 8 * BF16_U
    grad_hidden = d_g @ w.abs() + (v * FP32_U + BF16_U) * (g.abs() @ w.abs())
    grad_weight = d_g.t() @ h.abs() + (n * FP32_U + BF16_U) * (g.abs().t() @ h.abs())
    grad_bias = d_g.sum(0) + n * FP32_U * g.abs().sum(0)
    return dict(
        nll=d_nll * second_order,
        grad_hidden=grad_hidden * second_order,
        grad_weight=grad_weight * second_order,
        grad_bias=grad_bias * second_order,
    )


def assert_within(actual, expected, bound, what=""):
    """``|actual − expected| ≤ bound`` element-wise (float64), with the worst offender in the message."""
    expected = expected.detach().double()
    actual = actual.detach().double().reshape(expected.shape)
    excess = (actual - expected).abs() - bound
    worst = int(excess.reshape(-1).argmax()) if excess.numel() else 0
    assert excess.numel() == 0 or excess.max() <= 0, (
        f"{what}: |error| exceeds its bound at flat index {worst}: error "
        f"{(actual - expected).abs().reshape(-1)[worst]:.3e} > bound {bound.reshape(-1)[worst]:.3e}"
    )
