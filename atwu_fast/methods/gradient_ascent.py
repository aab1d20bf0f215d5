"""GradAscent and GradDiff: plain gradient ascent on the forget NLL (w_t = 1)."""

from __future__ import annotations

import torch

from .base import Method, TokenQuantities, weighted_ascent


def unit_weight_ascent(q: TokenQuantities, params) -> torch.Tensor:
    """L_f = −mean_t ℓ_t."""
    return weighted_ascent(q, torch.ones_like(q.forget_nll))


GRAD_ASCENT = Method("grad_ascent", "grad_ascent", unit_weight_ascent, uses_retain=False)
GRAD_DIFF = Method("grad_diff", "grad_diff", unit_weight_ascent)
