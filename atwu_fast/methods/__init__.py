"""The registry of unlearning methods: the one list of names (config sections, ``--help``,
``--methods all`` and the planner read it). Adding a method = its file + one line here."""

from __future__ import annotations

from .atwu import VARIANTS as ATWU_VARIANTS
from .base import Method
from .gradient_ascent import GRAD_ASCENT, GRAD_DIFF
from .npo import NPO, SIMNPO
from .token_weighted import SATIMP, WGA

METHODS: dict[str, Method] = {m.name: m for m in (
    *ATWU_VARIANTS,
    GRAD_ASCENT,
    GRAD_DIFF,
    NPO,
    SIMNPO,
    WGA,
    SATIMP,
)}
DEFAULT_METHOD = "atwu_logfit"


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method '{name}'; choose from {', '.join(METHODS)}") from None


def param_sections() -> dict[str, type]:
    """Config section name → hyper-parameter dataclass, in registry order (shared sections once)."""
    sections: dict[str, type] = {}
    for method in METHODS.values():
        sections.setdefault(method.params_section, method.params_type)
    return sections
