"""What every unlearning method is made of: per-token quantities, the :class:`Method` record, the
hyper-parameters all methods share, and the hooks a method may plug into the training loop.

A method is a small pure function ``loss(q, params) -> scalar`` over the per-token NLL of one
forget and one retain micro-batch (valid answer tokens only, flattened). ``q.forget_nll`` and
``q.retain_nll`` carry the gradient to the model; everything else is a constant. Its
hyper-parameters are a dataclass beside it (a config section of that name); the registry in
:mod:`atwu_fast.methods` is the one list of names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ..config import option

Count = Union[Tensor, float]


@dataclass
class TokenQuantities:
    forget_nll: Tensor  # [N_F] per-token NLL on forget answers (differentiable)
    forget_seq: Tensor  # [N_F] int64: which forget sequence each token belongs to
    n_forget_seqs: int
    retain_nll: Tensor  # [N_R] per-token NLL on retain answers (differentiable)
    n_forget: Optional[Count] = None  # normaliser N_F (default: number of forget tokens)
    n_retain: Optional[Count] = None  # normaliser N_R (default: number of retain tokens)
    forget_scores: Optional[Tensor] = None  # [N_F] ATWU token scores g (constant)
    ref_forget_nll: Optional[Tensor] = None  # [N_F] reference-model NLL (constant; NPO)
    forget_span_kind: Optional[Tensor] = None  # [N_F] ground-truth span kinds (controls only)
    n_seqs_total: Optional[Count] = None  # sequence-mean normaliser (default: n_forget_seqs)

    def nf(self) -> Count:
        return self.n_forget if self.n_forget is not None else max(self.forget_nll.numel(), 1)

    def nr(self) -> Count:
        return self.n_retain if self.n_retain is not None else max(self.retain_nll.numel(), 1)

    def nseq(self) -> Count:
        return self.n_seqs_total if self.n_seqs_total is not None else max(self.n_forget_seqs, 1)


@dataclass
class LossWeights:
    """total = γ·L_f + α·L_r: the weights every method with a retain term shares."""

    alpha: float = option("retain-loss weight", 1.0)
    gamma: float = option("forget-loss weight", 1.0)


class TrainingHooks:
    """What a method may plug into the unlearning loop; the defaults add nothing.

    ``loop`` is the running :class:`~atwu_fast.train.trainer.Unlearner` (its model, options, rows,
    distributed context and forward helpers). Per micro-batch the loop calls :meth:`after_forward`
    once the decoder forward has produced the answer tokens; if it returns a loss (a fused LM head
    that computes the NLL itself) that is the micro-batch's loss. Otherwise the loop computes the
    per-token NLL into ``q`` and calls :meth:`before_loss`, whose return value is added to the
    method's loss. :meth:`before_model_step` runs after backward, before clipping and the step.
    """

    def setup(self, loop) -> list[dict]:
        """Once, before the model optimiser is built; returns extra optimiser parameter groups."""
        return []

    def after_forward(self, loop, step: int, tokens, is_forget: Tensor, q: TokenQuantities,
                      stats: dict) -> Optional[Tensor]:
        return None

    def before_loss(self, loop, step: int, tokens, is_forget: Tensor, q: TokenQuantities, stats: dict) -> Tensor:
        return torch.zeros(())

    def before_model_step(self, loop) -> None:
        return None

    def token_weights(self, tokens) -> Optional[Tensor]:
        """The weights the method puts on evaluated forget tokens (``tokens.hidden(position)``, ``.nll``)."""
        return None

    def optimised_modules(self) -> dict[str, torch.nn.Module]:
        """Modules outside the model that the model optimiser also steps (gathered with it under FSDP)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def save(self, directory) -> None:
        """Write what the method learned besides the model into ``directory``."""
        return None


@dataclass(frozen=True)
class Method:
    """A registered method: its forget loss, its hyper-parameters, what it needs."""

    name: str
    params_type: type  # its hyper-parameter dataclass (the config section ``params_section``)
    forget_loss: Callable[[TokenQuantities, object], Tensor]
    section: str = ""  # config section holding its hyper-parameters (default: the name)
    fixed: dict[str, Any] = field(default_factory=dict)  # section fields this method fixes (variants)
    uses_retain: bool = True
    needs_reference: bool = False
    needs_spans: bool = False  # ground-truth span kinds of the forget tokens (hard-mask controls)
    hooks: Optional[Callable[[object], TrainingHooks]] = None  # hooks(params) for the training loop
    token_weights: Optional[Callable[[Tensor, object], Tensor]] = None  # w(nll) for span alignment

    @property
    def params_section(self) -> str:
        return self.section or self.name

    @property
    def learns_weights(self) -> bool:
        """Its token weights are learned during training (through its hooks), not a function of the NLL."""
        return self.hooks is not None

    def params(self, section_values) -> Any:
        """The hyper-parameters this method runs with: its config section with :attr:`fixed` applied."""
        return dataclasses.replace(section_values, **self.fixed) if self.fixed else section_values

    def ignored_settings(self, section_values) -> list[str]:
        """Section values set away from their defaults that this method overrides (for a warning)."""
        defaults = self.params_type()
        return [f"{self.params_section}.{key}={getattr(section_values, key)!r} (runs with {value!r})"
                for key, value in self.fixed.items()
                if getattr(section_values, key) != getattr(defaults, key) and getattr(section_values, key) != value]

    def loss(self, q: TokenQuantities, params) -> Tensor:
        """total = γ·L_f + α·L_r (L_r the token-mean retain NLL)."""
        total = params.gamma * self.forget_loss(q, params)
        if self.uses_retain and params.alpha != 0:
            total = total + params.alpha * retain_nll_mean(q)
        return total


def retain_nll_mean(q: TokenQuantities) -> Tensor:
    return q.retain_nll.sum() / q.nr()


def weighted_ascent(q: TokenQuantities, weights: Tensor) -> Tensor:
    """−(1/N_F) Σ_t [w_t]_sg · ℓ_t: gradient ascent on the forget NLL with constant token weights."""
    return -(weights.detach() * q.forget_nll).sum() / q.nf()


def sequence_sum(values: Tensor, seq: Tensor, n_seqs: int) -> Tensor:
    """Σ over the tokens of each sequence: [N] → [n_seqs] (differentiable)."""
    return torch.zeros(n_seqs, dtype=values.dtype, device=values.device).index_add(0, seq, values)


def sequence_lengths(seq: Tensor, n_seqs: int) -> Tensor:
    return torch.bincount(seq, minlength=n_seqs).to(torch.float32)
