"""The fused ATWU head: model loss, per-token NLL, scores, scorer reward and scorer gradient.

One sweep over ``H`` (:mod:`atwu_kernels.chunked` or :mod:`atwu_kernels.triton_fused`) forms every
row's log-sum-exp, its NLL ``ℓ``, its coefficient ``c`` (:class:`~atwu_kernels.coefficients.AtwuCoefficients`)
and the gradients of ``Σ c_i ℓ_i`` — forget and retain rows share one launch and one softmax. The
scorer is two mat-vecs over the score rows (``g = σ(H_s w + b)`` before the sweep, ``Σ r_i h_i``
after it): ``2·N·D`` FLOPs and one read of ``H_s`` each (Triton kernels reading the native dtype on
CUDA; 2 × 32 MB ≈ 15 µs at N=D=4096 bf16 on an H200, next to ≈ 20 ms for the sweep).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .coefficients import AtwuCoefficients
from .inputs import no_autocast, prepare
from .ops import fused_loss, make_plan
from .scorer import scorer_scores
from .selfcheck import choose

__all__ = ["AtwuHeadOutput", "atwu_head", "scorer_scores"]


class AtwuHeadOutput(NamedTuple):
    """Outputs of :func:`atwu_head`; everything but ``loss`` is detached fp32."""

    loss: torch.Tensor  # scalar, differentiable in hidden, weight, bias
    nll: torch.Tensor  # labels.shape
    scores: torch.Tensor  # labels.shape, g = σ(score_hidden·w + b)
    reward: torch.Tensor  # labels.shape, ℓ·exp(−β_r g ℓ) on forget rows, else 0
    scorer_grad_w: torch.Tensor  # [D]
    scorer_grad_b: torch.Tensor  # []


def _population_size(given, mask: torch.Tensor) -> torch.Tensor:
    """``N_F``/``N_R`` as a device tensor, at least 1 so an empty population contributes 0."""
    if given is None:
        count = mask.sum().to(torch.float32)
    else:
        count = torch.as_tensor(given, dtype=torch.float32, device=mask.device).detach().reshape(())
    return count.clamp_min(1.0)


def atwu_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    is_forget: torch.Tensor,
    scorer_weight: torch.Tensor,
    scorer_bias: torch.Tensor,
    *,
    score_hidden: torch.Tensor | None = None,
    alpha: float = 1.0,
    gamma: float = 1.0,
    beta: float = 5.0,
    saturation: str = "score",
    reward_beta: float | None = None,
    score_scale=None,
    n_forget=None,
    n_retain=None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    logit_scale: float | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    impl: str | None = None,
) -> AtwuHeadOutput:
    """ATWU model loss, per-token NLL, scores, scorer reward and scorer gradient in one pass.

    Model loss (scorer frozen, ``g`` detached)::

        L = α·(1/N_R) Σ_retain ℓ − γ·(1/N_F) Σ_forget g·[p^(β g)]_sg·ℓ      (saturation="score")

    ``N_F``/``N_R`` are the valid forget/retain token counts of this call unless ``n_forget``/
    ``n_retain`` are given (gradient accumulation, distributed sums); both are clamped to ≥ 1.

    Scorer objective's first term ``J = −(1/N_F) Σ_forget g_φ(h)·[r]_sg`` with reward
    ``r = ℓ·exp(−β_r g ℓ)`` (``β_r = reward_beta``, default ``beta``). Since ``∂g/∂(w, b) =
    g(1−g)·(h, 1)``::

        ∂J/∂w = −(1/N_F) Σ_forget r·g(1−g)·h_score,   ∂J/∂b = −(1/N_F) Σ_forget r·g(1−g)

    ``score_scale`` (a constant c, default none): the model loss uses ``min(1, c·g)`` in place of
    ``g`` (both the weight and the saturation exponent); ``scores``, the reward and the scorer
    gradient keep the raw ``g``.

    Cost: 6·N·D·V FLOPs with gradients (2·N·D·V under ``no_grad`` or when nothing requires grad),
    the same as :func:`~atwu_kernels.weighted_linear_cross_entropy`, plus 4·N·D for the scorer.
    """
    if saturation not in ("score", "raw"):
        raise ValueError(f"saturation must be 'score' or 'raw', got {saturation!r}")
    if is_forget.shape != labels.shape:
        raise ValueError(f"is_forget.shape {tuple(is_forget.shape)} must equal labels.shape {tuple(labels.shape)}")
    p = prepare(hidden, weight, labels, bias, ignore_index)
    options = (
        ("saturation", saturation),
        ("score_scale", score_scale is not None),
        ("score_hidden", None if score_hidden is None else score_hidden.dtype),
    )
    impl = choose("atwu_head", impl, hidden, weight, bias, softcap=softcap, logit_scale=logit_scale, options=options)
    plan = make_plan(p, impl, softcap, logit_scale, chunk_size, ignore_index)
    flat_forget = is_forget.reshape(-1).to(torch.bool)
    forget = flat_forget & p.valid
    retain = ~flat_forget & p.valid
    if score_hidden is None:
        score_hidden = hidden
    score_hidden2d = score_hidden.detach().reshape(-1, score_hidden.shape[-1])
    if score_hidden2d.shape[0] != p.labels.shape[0]:
        raise ValueError("score_hidden must have one row per token")
    with no_autocast(p.hidden.device):
        scores = plan.backend.scorer_scores(score_hidden2d, scorer_weight, scorer_bias)
        n_f = _population_size(n_forget, forget)
        n_r = _population_size(n_retain, retain)
        model_scores = scores
        if score_scale is not None:
            scale = torch.as_tensor(score_scale, dtype=torch.float32, device=scores.device).detach().reshape(())
            model_scores = (scores * scale).clamp(max=1.0)
        rule = AtwuCoefficients(model_scores, forget, retain, alpha, gamma, beta, saturation, n_f, n_r)
        loss, nll, _ = fused_loss(p, plan, rule)
        reward_beta = beta if reward_beta is None else reward_beta
        reward = torch.where(forget, nll * torch.exp(-reward_beta * scores * nll), 0.0)
        per_row = reward * scores * (1.0 - scores) / n_f
        scorer_grad_w = -plan.backend.scorer_row_sum(per_row, score_hidden2d)
        scorer_grad_b = -per_row.sum()
    shape = labels.shape
    return AtwuHeadOutput(
        loss, nll.reshape(shape), scores.reshape(shape), reward.reshape(shape), scorer_grad_w, scorer_grad_b
    )
