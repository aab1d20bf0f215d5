"""The problems the loss benchmarks measure: one definition for pytest, the memory probe and gpu_check.

Three ops, each forward + backward of a scalar loss over ``N`` tokens:

* ``token_nll`` — ``Σ w_i ℓ_i`` through :func:`atwu_kernels.linear_token_nll` (any upstream
  gradient: 8·N·D·V FLOPs, logits recomputed in backward);
* ``weighted_ce`` — the same loss through ``weighted_linear_cross_entropy(reduction="sum")``
  (gradient in forward, 6·N·D·V);
* ``atwu_head`` — the ATWU model loss of :func:`atwu_kernels.atwu_head` (6·N·D·V + 4·N·D);
* ``mean_ce`` (GPU check only) — plain mean cross-entropy, every peer's gradient-in-forward fast path.

``naive`` materialises the fp32 logits and uses ``F.cross_entropy`` (what a model's LM head + loss
does); peers (:mod:`peers`) compute the per-token NLL with their fused linear cross-entropy and
apply the same weights, so all variants of one op compute the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPS = ("token_nll", "weighted_ce", "atwu_head")
ATWU = dict(alpha=1.0, gamma=1.0, beta=5.0)  # atwu_head's defaults


@dataclass
class Problem:
    hidden: torch.Tensor  # [N, D] leaf
    weight: torch.Tensor  # [V, D] leaf
    labels: torch.Tensor  # [N], every 7th ignored
    token_weights: torch.Tensor  # [N] fp32
    is_forget: torch.Tensor  # [N] bool
    scorer_w: torch.Tensor  # [D] fp32
    scorer_b: torch.Tensor  # [] fp32

    def zero_grad(self) -> None:
        self.hidden.grad = self.weight.grad = None


def make_problem(n: int, d: int, v: int, dtype=torch.float32, device="cpu", seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=gen) / d**0.5).to(device, dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::7] = -100
    token_weights = torch.rand(n, generator=gen)
    is_forget = torch.rand(n, generator=gen) < 0.5
    scorer_w = torch.randn(d, generator=gen) * 0.1
    return Problem(
        hidden, weight, labels.to(device), token_weights.to(device), is_forget.to(device), scorer_w.to(device),
        torch.zeros((), device=device),
    )  # fmt: skip


def flops(op: str, n: int, d: int, v: int, logits_kept: bool = False) -> int:
    """FLOPs of one forward + backward as this package computes it (the GEMMs; row work is O(N·V));
    ``logits_kept``: the token NLL keeps its logits for backward (the CPU fp32 default) instead of
    recomputing them."""
    gemm = 2 * n * d * v
    return {"token_nll": (3 if logits_kept else 4) * gemm, "weighted_ce": 3 * gemm, "mean_ce": 3 * gemm, "atwu_head": 3 * gemm + 4 * n * d}[op]


def atwu_loss_from_nll(nll: torch.Tensor, p: Problem) -> torch.Tensor:
    """The ATWU model loss from any differentiable per-token NLL (``g``, ``p^(βg)`` held constant)."""
    valid = p.labels != -100
    forget, retain = p.is_forget & valid, ~p.is_forget & valid
    g = torch.sigmoid(p.hidden.detach().float() @ p.scorer_w + p.scorer_b)
    saturation = torch.exp(-ATWU["beta"] * g * nll.detach())
    retain_term = (nll * retain).sum() / retain.sum().clamp_min(1)
    forget_term = (g * saturation * nll * forget).sum() / forget.sum().clamp_min(1)
    return ATWU["alpha"] * retain_term - ATWU["gamma"] * forget_term


def loss_from_nll(op: str, nll: torch.Tensor, p: Problem) -> torch.Tensor:
    if op == "atwu_head":
        return atwu_loss_from_nll(nll, p)
    return (nll * p.token_weights).sum()


def naive_loss(op: str, p: Problem) -> torch.Tensor:
    logits = (p.hidden @ p.weight.t()).float()
    if op == "mean_ce":
        return F.cross_entropy(logits, p.labels, ignore_index=-100)
    nll = F.cross_entropy(logits, p.labels, reduction="none", ignore_index=-100)
    return loss_from_nll(op, nll, p)


def fused_loss(op: str, p: Problem, impl: str | None = None, keep_logits: bool | None = None) -> torch.Tensor:
    from atwu_kernels import atwu_head, linear_token_nll, weighted_linear_cross_entropy

    if op == "token_nll":
        nll = linear_token_nll(p.hidden, p.weight, p.labels, impl=impl, keep_logits=keep_logits)
        return (nll * p.token_weights).sum()
    if op == "weighted_ce":
        return weighted_linear_cross_entropy(p.hidden, p.weight, p.labels, p.token_weights, reduction="sum", impl=impl)
    if op == "mean_ce":
        return weighted_linear_cross_entropy(p.hidden, p.weight, p.labels, impl=impl)
    head = atwu_head(p.hidden, p.weight, p.labels, p.is_forget, p.scorer_w, p.scorer_b, impl=impl, **ATWU)
    return head.loss


def loss_fn(op: str, variant: str, p: Problem) -> torch.Tensor:
    """``variant``: ``naive``, ``fused`` (default dispatch), ``fused:<impl>``, ``fused-recomputed``
    (default dispatch, the token NLL's logits recomputed in backward rather than kept) or ``peer:<name>``."""
    if variant == "naive":
        return naive_loss(op, p)
    if variant == "fused-recomputed":
        return fused_loss(op, p, keep_logits=False)
    if variant == "fused" or variant.startswith("fused:"):
        return fused_loss(op, p, variant.partition(":")[2] or None)
    if variant.startswith("peer:"):
        from peers import peer_mean_loss, peer_token_nll

        if op == "mean_ce":
            return peer_mean_loss(variant[5:], p.hidden, p.weight, p.labels)
        return loss_from_nll(op, peer_token_nll(variant[5:], p.hidden, p.weight, p.labels), p)
    raise ValueError(f"unknown variant {variant!r}")


def step(op: str, variant: str, p: Problem) -> torch.Tensor:
    """One forward + backward from cleared gradients (``.grad`` set to None first, as a training
    loop's ``zero_grad()`` does, so a previous step's gradients are not counted)."""
    p.zero_grad()
    loss = loss_fn(op, variant, p)
    loss.backward()
    return loss.detach()


def loss_tolerance(op: str, p: Problem, low_precision_operands: bool) -> float:
    """Bound on the difference of two correct computations of the loss.

    ``|Δℓ_i| ≤ 2·δ`` with ``δ`` the logit error: ``u·max|z| + D·u₃₂·max|z|`` for bf16 GEMM operands
    (``u = 2⁻⁸``), ``D·u₃₂·max|z|`` for fp32, plus ``(V + 2)·u₃₂`` for the fp32 log-sum-exp;
    ``max|z| ≤ max‖h‖·max‖w‖`` (Cauchy–Schwarz). The loss is ``Σ c_i ℓ_i`` with ``Σ|c_i|`` = the
    weights' sum (``token_nll``, ``weighted_ce``) or ``α + γ`` (``atwu_head``, means over two
    populations), and each side may err by the bound, hence the factor 2.
    """
    n, d = p.hidden.shape
    v = p.weight.shape[0]
    z_max = (p.hidden.detach().float().norm(dim=1).max() * p.weight.detach().float().norm(dim=1).max()).item()
    u32 = 2.0**-24
    delta = (2.0**-8 if low_precision_operands else 0.0) * z_max + d * u32 * z_max
    d_nll = 2 * delta + (v + 2) * u32 * (1 + z_max)
    coeff_sum = {"atwu_head": ATWU["alpha"] + ATWU["gamma"], "mean_ce": 1.0}.get(op) or float(p.token_weights.sum())
    return 2 * coeff_sum * d_nll
