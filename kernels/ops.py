"""Public ops: per-token NLL, weighted linear cross-entropy, and the fused ATWU head.

All three run on the chunk machinery of :mod:`atwu_kernels.chunked` and never hold more than one
``chunk_size × V`` logits buffer. Hidden states may be ``[N, D]`` or ``[..., D]`` with
``labels.shape == hidden.shape[:-1]``; per-token outputs have ``labels.shape``.

Logits are ``t = softcap·tanh(logit_scale·(h·Wᵀ + bias)/softcap)`` (each stage optional).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .chunked import FusedLinearLoss, LinearTokenNLL
from .dispatch import row_ops_for
from .transform import LogitTransform

DEFAULT_CHUNK_SIZE = 1024


class _Prepared(NamedTuple):
    hidden: torch.Tensor  # [N, D]
    weight: torch.Tensor  # [V, D]
    bias: torch.Tensor | None  # [V]
    labels: torch.Tensor  # [N] int64
    valid: torch.Tensor  # [N] bool


def _prepare(hidden, weight, labels, bias, ignore_index) -> _Prepared:
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be [V, D] with D = hidden.shape[-1]; got {tuple(weight.shape)}, {tuple(hidden.shape)}"
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"labels.shape {tuple(labels.shape)} must equal hidden.shape[:-1] {tuple(hidden.shape[:-1])}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [V]={weight.shape[0]}, got {tuple(bias.shape)}")
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    hidden2d = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    flat_labels = labels.reshape(-1).to(torch.long).contiguous()
    return _Prepared(
        hidden2d,
        weight.to(dtype),
        None if bias is None else bias.to(dtype),
        flat_labels,
        flat_labels != ignore_index,
    )


def _check_chunk_size(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def linear_token_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    logit_scale: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    impl: str | None = None,
) -> torch.Tensor:
    """Per-token NLL ``ℓ_i = logsumexp(t_i) − t_{i,y_i}`` (fp32; 0 on ignored rows), shape ``labels.shape``.

    Differentiable in ``hidden``, ``weight`` and ``bias`` for any upstream gradient ``g``:
    backward recomputes each chunk's logits and back-propagates ``g_i·(softmax(t_i) − onehot(y_i))``.
    """
    p = _prepare(hidden, weight, labels, bias, ignore_index)
    ops = row_ops_for(p.hidden.device, impl)
    transform = LogitTransform.build(logit_scale, softcap)
    nll = LinearTokenNLL.apply(
        p.hidden, p.weight, p.bias, p.labels, ops, transform, _check_chunk_size(chunk_size), ignore_index
    )
    return nll.reshape(labels.shape)


def _as_weights(token_weights, prepared: _Prepared) -> torch.Tensor:
    if token_weights is None:
        return prepared.valid.to(torch.float32)
    weights = torch.as_tensor(token_weights, device=prepared.labels.device).detach().to(torch.float32).reshape(-1)
    if weights.shape != prepared.labels.shape:
        raise ValueError(
            f"token_weights must have labels' shape ({prepared.labels.numel()} tokens), got {weights.numel()}"
        )
    return torch.where(prepared.valid, weights, 0.0)


def weighted_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    logit_scale: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    impl: str | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weightᵀ`` with constant per-token weights ``w`` (detached).

    * ``"mean"``: ``Σ w_i ℓ_i / Σ_valid w_i`` (0 when the denominator is 0);
    * ``"sum"``:  ``Σ w_i ℓ_i``;
    * ``"none"``: ``w_i ℓ_i`` with ``labels.shape``.

    ``"mean"``/``"sum"`` use the gradient-in-forward path (``c_i = w_i / denominator``, 6·N·D·V FLOPs);
    ``"none"`` goes through :func:`linear_token_nll` so any upstream gradient works.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    p = _prepare(hidden, weight, labels, bias, ignore_index)
    weights = _as_weights(token_weights, p)
    kwargs = dict(
        bias=bias, ignore_index=ignore_index, softcap=softcap, logit_scale=logit_scale, chunk_size=chunk_size, impl=impl
    )
    if reduction == "none":
        return linear_token_nll(hidden, weight, labels, **kwargs) * weights.reshape(labels.shape)
    if reduction == "mean":
        denominator = weights.sum()
        coefficients = torch.where(denominator != 0, weights / torch.where(denominator != 0, denominator, 1.0), 0.0)
    else:
        coefficients = weights
    ops = row_ops_for(p.hidden.device, impl)
    transform = LogitTransform.build(logit_scale, softcap)
    loss, _, _ = FusedLinearLoss.apply(
        p.hidden, p.weight, p.bias, p.labels, ops, transform, _check_chunk_size(chunk_size), ignore_index, coefficients
    )
    return loss


# --------------------------------------------------------------------------------------------
# The fused ATWU head
# --------------------------------------------------------------------------------------------


class AtwuHeadOutput(NamedTuple):
    """Outputs of :func:`atwu_head`; everything but ``loss`` is detached fp32."""

    loss: torch.Tensor  # scalar, differentiable in hidden, weight, bias
    nll: torch.Tensor  # labels.shape
    scores: torch.Tensor  # labels.shape, g = σ(score_hidden·w + b)
    reward: torch.Tensor  # labels.shape, ℓ·exp(−β_r g ℓ) on forget rows, else 0
    scorer_grad_w: torch.Tensor  # [D]
    scorer_grad_b: torch.Tensor  # []


def scorer_scores(score_hidden2d: torch.Tensor, scorer_weight: torch.Tensor, scorer_bias: torch.Tensor) -> torch.Tensor:
    """``g = σ(h·w + b)`` in fp32, detached."""
    with torch.no_grad():
        logits = score_hidden2d.float() @ scorer_weight.detach().float().reshape(-1)
        return torch.sigmoid(logits + scorer_bias.detach().float().reshape(()))


def _population_size(given, mask: torch.Tensor) -> torch.Tensor:
    """``N_F``/``N_R`` as a device tensor, at least 1 so an empty population contributes 0."""
    if given is None:
        count = mask.sum().to(torch.float32)
    else:
        count = torch.as_tensor(given, dtype=torch.float32, device=mask.device).detach().reshape(())
    return count.clamp_min(1.0)


def atwu_token_coefficients(
    nll: torch.Tensor,
    scores: torch.Tensor,
    forget: torch.Tensor,
    retain: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    beta: float,
    saturation: str,
    n_forget: torch.Tensor,
    n_retain: torch.Tensor,
) -> torch.Tensor:
    """Per-row ``c_i`` of ``L = α/N_R Σ_R ℓ − γ/N_F Σ_F g·[p^(β_eff)]_sg·ℓ``, ``p = exp(−ℓ)``.

    ``β_eff = β·g`` (``saturation="score"``) or ``β`` (``"raw"``); ``g`` and ``p`` are constants,
    so ``∂L/∂ℓ_i = c_i`` and the logits gradient of row i is ``c_i·(softmax − onehot)``.
    """
    exponent = beta * scores if saturation == "score" else torch.full_like(scores, beta)
    forget_weight = scores * torch.exp(-exponent * nll)
    return torch.where(forget, -gamma * forget_weight / n_forget, torch.where(retain, alpha / n_retain, 0.0))


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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
    """
    if saturation not in ("score", "raw"):
        raise ValueError(f"saturation must be 'score' or 'raw', got {saturation!r}")
    if is_forget.shape != labels.shape:
        raise ValueError(f"is_forget.shape {tuple(is_forget.shape)} must equal labels.shape {tuple(labels.shape)}")
    p = _prepare(hidden, weight, labels, bias, ignore_index)
    flat_forget = is_forget.reshape(-1).to(torch.bool)
    forget = flat_forget & p.valid
    retain = ~flat_forget & p.valid
    if score_hidden is None:
        score_hidden = hidden
    score_hidden2d = score_hidden.detach().reshape(-1, score_hidden.shape[-1])
    if score_hidden2d.shape[0] != p.labels.shape[0]:
        raise ValueError("score_hidden must have one row per token")
    scores = scorer_scores(score_hidden2d, scorer_weight, scorer_bias)
    n_f = _population_size(n_forget, forget)
    n_r = _population_size(n_retain, retain)
    model_scores = scores
    if score_scale is not None:
        scale = torch.as_tensor(score_scale, dtype=torch.float32, device=scores.device).detach().reshape(())
        model_scores = (scores * scale).clamp(max=1.0)

    def coefficients(nll_chunk: torch.Tensor, rows: slice) -> torch.Tensor:
        return atwu_token_coefficients(
            nll_chunk,
            model_scores[rows],
            forget[rows],
            retain[rows],
            alpha=alpha,
            gamma=gamma,
            beta=beta,
            saturation=saturation,
            n_forget=n_f,
            n_retain=n_r,
        )

    ops = row_ops_for(p.hidden.device, impl)
    transform = LogitTransform.build(logit_scale, softcap)
    loss, nll, _ = FusedLinearLoss.apply(
        p.hidden, p.weight, p.bias, p.labels, ops, transform, _check_chunk_size(chunk_size), ignore_index, coefficients
    )
    reward_beta = beta if reward_beta is None else reward_beta
    reward = torch.where(forget, nll * torch.exp(-reward_beta * scores * nll), 0.0)
    per_row = reward * scores * (1.0 - scores) / n_f
    scorer_grad_w = -(per_row @ score_hidden2d.float())
    scorer_grad_b = -per_row.sum()
    shape = labels.shape
    return AtwuHeadOutput(
        loss, nll.reshape(shape), scores.reshape(shape), reward.reshape(shape), scorer_grad_w, scorer_grad_b
    )
