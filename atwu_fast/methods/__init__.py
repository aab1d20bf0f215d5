"""The registry of unlearning methods: the one list of names (config sections, ``--help``,
``--methods all`` and the planner read it). Adding a method = its file + one line here."""

from __future__ import annotations

from .atwu import VARIANTS as ATWU_VARIANTS
from .base import Method
from .gradient_ascent import GRAD_ASCENT, GRAD_DIFF
from .npo import NPO, SIMNPO
from .preference import DPO, IDK_DPO
from .rmu import RMU
from .seul import SEUL
from .token_weighted import SATIMP, WGA
from .undial import UNDIAL
from .weights import SOURCES, plug_in

BASES: tuple[Method, ...] = (
    *ATWU_VARIANTS,
    GRAD_ASCENT,
    GRAD_DIFF,
    NPO,
    SIMNPO,
    WGA,
    SATIMP,
    RMU,
    DPO,
    IDK_DPO,
    UNDIAL,
    SEUL,
)
# ATWU's learned scores as the token weights of the other losses (docs/method.md, "ATWU as a plug-in")
PLUGINS = tuple(plug_in(m, "atwu") for m in (GRAD_DIFF, NPO, SIMNPO, DPO, IDK_DPO, UNDIAL, RMU))
METHODS: dict[str, Method] = {m.name: m for m in (*BASES, *PLUGINS)}
DEFAULT_METHOD = "atwu_logfit"


def get_method(name: str) -> Method:
    """A registered method, or ``<method>+<source>``: the method's loss with a weight source's token
    weights (:mod:`atwu_fast.methods.weights`; sources: atwu, an ATWU variant, seul, truth, truth_facts)."""
    if name in METHODS:
        return METHODS[name]
    base, plus, source = name.partition("+")
    if plus and base in METHODS and "+" not in base:
        try:
            return plug_in(METHODS[base], source)
        except ValueError as exc:
            raise KeyError(str(exc)) from None
    raise KeyError(f"unknown method '{name}'; choose from {', '.join(METHODS)} (or <method>+<source>, "
                   f"sources: {', '.join(SOURCES)})")


def param_sections() -> dict[str, type]:
    """Config section name → hyper-parameter dataclass, in registry order (shared sections once)."""
    sections: dict[str, type] = {}
    for method in BASES:
        sections.setdefault(method.params_section, method.params_type)
    return sections
