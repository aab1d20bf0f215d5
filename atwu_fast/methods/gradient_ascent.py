"""GradAscent and GradDiff: plain gradient ascent on the forget NLL (w_t = 1, or a weight source's w_t).

    L_f = −(1/N_F) Σ_t w_t·ℓ_t;   GradAscent: total = γ·L_f;   GradDiff: total = γ·L_f + α·L_R
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .base import LossWeights, Method, ascent


@dataclass
class GradAscentParams:
    gamma: float = option("forget-loss weight", 1.0)


@dataclass
class GradDiffParams(LossWeights):
    pass


def ascent_loss(q, params):
    return ascent(q)


GRAD_ASCENT = Method("grad_ascent", GradAscentParams, ascent_loss, uses_retain=False, pluggable=True,
                     doc="−mean ℓ, no retain term (Jang et al. 2023)")
GRAD_DIFF = Method("grad_diff", GradDiffParams, ascent_loss, pluggable=True, doc="−mean ℓ + α·retain NLL (Liu et al. 2022)")
