"""GradAscent and GradDiff: plain gradient ascent on the forget NLL (w_t = 1).

    L_f = −mean_t ℓ_t;   GradAscent: total = γ·L_f;   GradDiff: total = γ·L_f + α·L_R
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from .base import LossWeights, Method, TokenQuantities, weighted_ascent


@dataclass
class GradAscentParams:
    gamma: float = option("forget-loss weight", 1.0)


@dataclass
class GradDiffParams(LossWeights):
    pass


def unit_weight_ascent(q: TokenQuantities, params) -> torch.Tensor:
    """L_f = −mean_t ℓ_t."""
    return weighted_ascent(q, torch.ones_like(q.forget_nll))


GRAD_ASCENT = Method("grad_ascent", GradAscentParams, unit_weight_ascent, uses_retain=False)
GRAD_DIFF = Method("grad_diff", GradDiffParams, unit_weight_ascent)
