"""ATWU's model loss (scorer frozen during the model step).

    L_θ = α·L_R − γ·(1/N_F) Σ_t g_t·[p_t^(β g_t)]_sg·ℓ_t          (saturation "score")
    L_θ = α·L_R − γ·(1/N_F) Σ_t g_t·[p_t^β]_sg·ℓ_t               (saturation "raw")

Why "saturated": d/dθ of (1/β)(p^(βg) − 1) = (1/β)·p^(βg)·βg·d(log p) = −g·p^(βg)·dℓ, so the
θ-gradient equals that of the bounded surrogate (γ/β)·mean(p^(βg) − 1): a token's push fades
once it is forgotten (p → 0). With g ≡ 1 this is WGA with weight p^β.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import POOLED_SPAN, UNIQUE_SPAN, Method, TokenQuantities, weighted_ascent


def atwu_forget_weights(nll: torch.Tensor, scores: torch.Tensor, beta: float, saturation: str) -> torch.Tensor:
    """w_t = g_t·p_t^(β g_t) ("score") or g_t·p_t^β ("raw"), all constants."""
    g = scores.detach().to(nll.dtype)
    exponent = beta * g if saturation == "score" else beta
    return g * torch.exp(-exponent * nll.detach())


def atwu_loss(q: TokenQuantities, params):
    if q.forget_scores is None:
        raise ValueError("ATWU needs token scores")
    return weighted_ascent(q, atwu_forget_weights(q.forget_nll, q.forget_scores, params.beta, params.saturation))


def oracle_mask_loss(min_kind: int, name: str):
    """A hard-mask control: ATWU's saturated loss with g = 1 on ground-truth span tokens of kind
    ≥ ``min_kind`` and 0 elsewhere."""
    def loss(q: TokenQuantities, params):
        if q.forget_span_kind is None:
            raise ValueError(f"{name} needs ground-truth spans")
        mask = (q.forget_span_kind >= min_kind).to(q.forget_nll.dtype)
        return weighted_ascent(q, atwu_forget_weights(q.forget_nll, mask, params.beta, params.saturation))
    return loss


# author-unique spans only (the "forget-specific" tokens), or every fact value (pooled ones too)
atwu_oracle_loss = oracle_mask_loss(UNIQUE_SPAN, "atwu_oracle")
atwu_oracle_facts_loss = oracle_mask_loss(POOLED_SPAN, "atwu_oracle_facts")


# The ATWU variants share the ``atwu`` config section; each fixes the fields below on top of it
# (a command-line value of a fixed field is overridden for that variant; see ignored_settings).
FAITHFUL = {"lambda_reward": 1.0, "lambda_contrast": 0.0, "lambda_fit": 0.0}  # ATWU.md's scorer objective (schedule options free)
# The scorer-study variant (docs/scorer_study.md): non-saturating reward r = ℓ (β_r = 0) divided by
# its batch mean, a scorer step every model step, the predictor position, 50 pre-training steps.
NLL_TRACKING = {"lambda_reward": 1.0, "lambda_contrast": 0.0, "lambda_fit": 0.0, "reward_beta": 0.0,
                "reward_norm": True, "update_every": 1, "score_position": "predictor", "pretrain_steps": 50}
# The log-loss fit variant (docs/scorer_study.md, "Log-loss fit"): the scorer is fitted to the soft
# label σ(standardised log ℓ) by cross-entropy instead of the reward; no entropy or budget term,
# a light L2 (0.01); schedule as atwu_nll.
LOG_FIT = {"lambda_reward": 0.0, "lambda_contrast": 0.0, "lambda_fit": 1.0, "lambda_entropy": 0.0,
           "lambda_budget": 0.0, "lambda_l2": 0.01, "update_every": 1, "score_position": "predictor",
           "pretrain_steps": 50}
VARIANTS: dict[str, dict] = {
    "atwu": {},
    "atwu_faithful": FAITHFUL,
    "atwu_nll": NLL_TRACKING,
    "atwu_logfit": LOG_FIT,
    "atwu_frozen": {"schedule": "frozen", "pretrain_steps": 0},  # g ≡ init_score (0.5) throughout
    "atwu_oracle": {},
    "atwu_oracle_facts": {},
}


def variant_params(name: str, params):
    """The ``atwu`` section as method ``name`` runs it."""
    fixed = VARIANTS.get(name, {})
    return dataclasses.replace(params, **fixed) if fixed else params


def ignored_settings(name: str, params, defaults) -> list[str]:
    """``atwu.*`` values set away from ``defaults`` that variant ``name`` overrides (for a warning)."""
    return [f"atwu.{key}={getattr(params, key)!r} (runs with {value!r})"
            for key, value in VARIANTS.get(name, {}).items()
            if getattr(params, key) != getattr(defaults, key) and getattr(params, key) != value]


ATWU = Method("atwu", "atwu", atwu_loss, needs_scorer=True)
ATWU_FAITHFUL = Method("atwu_faithful", "atwu", atwu_loss, needs_scorer=True)
ATWU_NLL = Method("atwu_nll", "atwu", atwu_loss, needs_scorer=True)
ATWU_LOGFIT = Method("atwu_logfit", "atwu", atwu_loss, needs_scorer=True)
ATWU_FROZEN = Method("atwu_frozen", "atwu", atwu_loss, needs_scorer=True)
ATWU_ORACLE = Method("atwu_oracle", "atwu", atwu_oracle_loss)
ATWU_ORACLE_FACTS = Method("atwu_oracle_facts", "atwu", atwu_oracle_facts_loss)
