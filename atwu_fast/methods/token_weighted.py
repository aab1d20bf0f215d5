"""Probability-weighted gradient ascent: WGA and SatImp. With p_t = exp(−ℓ_t):

    WGA:    w_t = [p_t^β]_sg                  L_f = −(1/N_F) Σ w_t ℓ_t
    SatImp: w_t = [p_t^β1 (1 − p_t)^β2]_sg
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from ..config.search import Float
from .base import LossWeights, Method, TokenQuantities, weighted_ascent


@dataclass
class WGAParams(LossWeights):
    beta: float = option("weight exponent: w = p^beta", 1.0)


@dataclass
class SatImpParams(LossWeights):
    beta1: float = option("saturation exponent: w = p^beta1 (1-p)^beta2", 5.0)
    beta2: float = option("importance exponent", 1.0)


def wga_weights(nll: torch.Tensor, params) -> torch.Tensor:
    return torch.exp(-params.beta * nll.detach())


def satimp_weights(nll: torch.Tensor, params) -> torch.Tensor:
    p = torch.exp(-nll.detach())
    return p.pow(params.beta1) * (1.0 - p).clamp_min(0).pow(params.beta2)


def wga_loss(q: TokenQuantities, params):
    return weighted_ascent(q, wga_weights(q.forget_nll, params))


def satimp_loss(q: TokenQuantities, params):
    return weighted_ascent(q, satimp_weights(q.forget_nll, params))


WGA = Method("wga", WGAParams, wga_loss, token_weights=wga_weights, search={"beta": Float(0.1, 10.0, log=True)},
             doc="−mean [p^β]_sg·ℓ (Wang et al. 2025, WGA)")
SATIMP = Method("satimp", SatImpParams, satimp_loss, token_weights=satimp_weights,
                search={"beta1": Float(0.5, 10.0, log=True), "beta2": Float(0.1, 5.0, log=True)},
                doc="−mean [p^β1·(1−p)^β2]_sg·ℓ (Yang et al. 2025, SatImp)")
