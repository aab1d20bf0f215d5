"""ATWU's model loss (scorer frozen during the model step) and the hard-mask controls.

    L_θ = α·L_R − γ·(1/N_F) Σ_t g_t·[p_t^(β g_t)]_sg·ℓ_t          (saturation "score")
    L_θ = α·L_R − γ·(1/N_F) Σ_t g_t·[p_t^β]_sg·ℓ_t               (saturation "raw")

Why "saturated": d/dθ of (1/β)(p^(βg) − 1) = (1/β)·p^(βg)·βg·d(log p) = −g·p^(βg)·dℓ, so the
θ-gradient equals that of the bounded surrogate (γ/β)·mean(p^(βg) − 1): a token's push fades
once it is forgotten (p → 0). With g ≡ 1 this is WGA with weight p^β.
"""

from __future__ import annotations

import torch

from ...data.labels import POOLED, UNIQUE
from ..base import TokenQuantities, weighted_ascent


def atwu_forget_weights(nll: torch.Tensor, scores: torch.Tensor, beta: float, saturation: str) -> torch.Tensor:
    """w_t = g_t·p_t^(β g_t) ("score") or g_t·p_t^β ("raw"), all constants."""
    g = scores.detach().to(nll.dtype)
    exponent = beta * g if saturation == "score" else beta
    return g * torch.exp(-exponent * nll.detach())


def atwu_loss(q: TokenQuantities, params):
    """The saturated forget loss with the weight source's scores as g (ATWU's scorer, or any mask)."""
    if q.forget_weights is None:
        raise ValueError("ATWU needs token scores")
    return weighted_ascent(q, atwu_forget_weights(q.forget_nll, q.forget_weights, params.beta, params.saturation))


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
atwu_oracle_loss = oracle_mask_loss(UNIQUE, "atwu_oracle")
atwu_oracle_facts_loss = oracle_mask_loss(POOLED, "atwu_oracle_facts")
