"""Registry of unlearning methods by name."""

from __future__ import annotations

from .atwu import (
    ATWU,
    ATWU_FAITHFUL,
    ATWU_FROZEN,
    ATWU_LOGFIT,
    ATWU_NLL,
    ATWU_ORACLE,
    ATWU_ORACLE_FACTS,
    atwu_forget_weights,
    ignored_settings,
    variant_params,
)
from .base import Method, TokenQuantities, retain_nll_mean, sequence_sum, weighted_ascent
from .gradient_ascent import GRAD_ASCENT, GRAD_DIFF
from .npo import NPO, SIMNPO
from .token_weighted import SATIMP, WGA, satimp_weights, wga_weights

METHODS: dict[str, Method] = {m.name: m for m in (ATWU, ATWU_FAITHFUL, ATWU_NLL, ATWU_LOGFIT, ATWU_FROZEN, ATWU_ORACLE,
                                                  ATWU_ORACLE_FACTS, GRAD_ASCENT, GRAD_DIFF, NPO, SIMNPO, WGA, SATIMP)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method '{name}'; choose from {', '.join(METHODS)}") from None


__all__ = [
    "ignored_settings",
    "METHODS", "Method", "TokenQuantities", "get_method", "atwu_forget_weights", "variant_params", "wga_weights", "satimp_weights",
    "retain_nll_mean", "sequence_sum", "weighted_ascent",
]
