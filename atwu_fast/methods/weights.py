"""Token weights as a plug-in: any loss that reads ``q.forget_weights`` runs with the weights of any
source — ATWU's learned scores, the SEUL mask, or ground-truth span masks.

``<method>+<source>`` is method's loss with source's weights: ``npo+atwu`` weighs NPO's per-token
log-ratios by ATWU's learned scores g (the scorer trained by the default ATWU objective, atwu_logfit's,
on the ``atwu`` section; ``npo+atwu_faithful`` by the specified objective), ``npo+seul`` by the SEUL
mask, ``npo+truth`` by the ground-truth author-unique tokens (a hard-mask control), ``atwu+seul`` is the
saturated hard-mask control on the SEUL mask. How each loss reads the weights is in its docstring
(docs/method.md collects them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from ..data.labels import POOLED, UNIQUE
from .atwu import LOG_FIT
from .atwu import VARIANTS as ATWU_VARIANTS
from .atwu.hooks import ScorerHooks
from .atwu.params import ATWUParams
from .base import Method, TokenQuantities, TrainingHooks, combine
from .seul import SeulMaskHooks, SEULParams


@dataclass(frozen=True)
class WeightSource:
    """Where token weights come from: hooks that set ``q.forget_weights`` (and give evaluation the same
    weights), reading their own config section."""

    name: str
    hooks: Callable[[Any], TrainingHooks]
    section: Optional[str] = None  # None: the source has no options
    params_type: Optional[type] = None
    fixed: dict = field(default_factory=dict)  # section fields the source fixes (an ATWU variant's objective)
    learned: bool = False
    needs_spans: bool = False  # ground-truth span kinds of the forget tokens

    def params(self, values):
        return dataclasses.replace(values, **self.fixed) if self.fixed else values


class SpanMaskHooks(TrainingHooks):
    """g = 1 on forget tokens whose ground-truth span kind is at least ``min_kind``, else 0."""

    def __init__(self, min_kind: int):
        self.min_kind = min_kind

    def before_loss(self, loop, step, tokens, is_forget, q: TokenQuantities, stats) -> Tensor:
        if q.forget_span_kind is None:
            raise ValueError("a ground-truth mask needs the forget rows' spans")
        q.forget_weights = (q.forget_span_kind >= self.min_kind).to(q.forget_nll.dtype)
        return torch.zeros(())

    def token_weights(self, tokens, rows) -> Optional[Tensor]:
        return None if tokens.span_kind is None else (tokens.span_kind >= self.min_kind).float()


def _atwu_source(variant: Method) -> WeightSource:
    return WeightSource(variant.name, lambda p: ScorerHooks(p, fused=False), "atwu", ATWUParams,
                        dict(variant.fixed), learned=True)


SOURCES: dict[str, WeightSource] = {
    # "+atwu": the learned scores of the default ATWU method (its log-loss-fit scorer objective)
    "atwu": WeightSource("atwu", lambda p: ScorerHooks(p, fused=False), "atwu", ATWUParams, dict(LOG_FIT), learned=True),
    **{m.name: _atwu_source(m) for m in ATWU_VARIANTS if m.weight_hooks == "learned" and m.name != "atwu"},
    "seul": WeightSource("seul", SeulMaskHooks, "seul", SEULParams),
    "truth": WeightSource("truth", lambda p: SpanMaskHooks(UNIQUE), needs_spans=True),
    "truth_facts": WeightSource("truth_facts", lambda p: SpanMaskHooks(POOLED), needs_spans=True),
}


@dataclass(frozen=True)
class Weighted:
    """A plug-in method's parameters: its loss's and its weight source's."""

    base: Any
    source: Any


@dataclass(frozen=True)
class WeightedMethod(Method):
    """``base``'s loss with ``source``'s token weights (see the module docstring)."""

    base: Optional[Method] = None
    source: Optional[WeightSource] = None

    @property
    def learns_weights(self) -> bool:
        return self.source.learned

    @property
    def has_weights(self) -> bool:
        return True

    def sections(self, cfg) -> Weighted:
        return Weighted(self.base.sections(cfg), getattr(cfg, self.source.section) if self.source.section else None)

    def params(self, sections: Weighted) -> Weighted:
        return Weighted(self.base.params(sections.base),
                        None if sections.source is None else self.source.params(sections.source))

    def make_hooks(self, params: Weighted) -> TrainingHooks:
        own = None if self.base.weight_hooks or not self.base.hooks else self.base.hooks(params.base)
        return combine(own, self.source.hooks(params.source))

    def fixed_values(self) -> dict[str, dict]:
        fixed = self.base.fixed_values()
        if self.source.fixed:
            fixed[self.source.section] = {**fixed.get(self.source.section, {}), **self.source.fixed}
        return fixed

    def ignored_settings(self, sections: Weighted) -> list[str]:
        notes = self.base.ignored_settings(sections.base)
        if self.source.fixed and sections.source is not None:
            defaults = self.source.params_type()
            notes += [f"{self.source.section}.{k}={getattr(sections.source, k)!r} (runs with {v!r})"
                      for k, v in self.source.fixed.items()
                      if getattr(sections.source, k) != getattr(defaults, k) and getattr(sections.source, k) != v]
        return notes

    def loss(self, q: TokenQuantities, params: Weighted) -> Tensor:
        return self.base.loss(q, params.base)


def plug_in(base: Method, source_name: str, name: str = "") -> WeightedMethod:
    """``base`` with the token weights of the source ``source_name``; a one-line ValueError when the
    loss does not read token weights."""
    if source_name not in SOURCES:
        raise ValueError(f"unknown weight source '{source_name}'; choose from {', '.join(SOURCES)}")
    if not base.pluggable:
        raise ValueError(f"{base.name} does not take token weights; methods that do: "
                         "grad_ascent, grad_diff, npo, simnpo, dpo, idk_dpo, undial, rmu and the atwu variants")
    source = SOURCES[source_name]
    return WeightedMethod(name or f"{base.name}+{source_name}", base.params_type, base.forget_loss,
                          section=base.params_section, fixed=base.fixed, uses_retain=base.uses_retain,
                          needs_reference=base.needs_reference, needs_spans=base.needs_spans or source.needs_spans,
                          hooks=base.hooks, weight_hooks="learned" if source.learned else "mask",
                          retain_loss=base.retain_loss, search=base.search,
                          doc=f"{base.name}'s loss weighted by {source_name}'s token weights",
                          base=base, source=source)
