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
from ..config.search import Float, Space

# the tuner's shared ranges: the model's learning rate and the loss weights γ, α
LR_RANGE = Float(1e-4, 2e-2, log=True)
WEIGHT_RANGE = Float(0.1, 10.0, log=True)

Count = Union[Tensor, float]


@dataclass
class TokenQuantities:
    forget_nll: Tensor  # [N_F] per-token NLL on forget answers (differentiable)
    forget_seq: Tensor  # [N_F] int64: which forget sequence each token belongs to
    n_forget_seqs: int
    retain_nll: Tensor  # [N_R] per-token NLL on retain answers (differentiable)
    n_forget: Optional[Count] = None  # normaliser N_F (default: number of forget tokens)
    n_retain: Optional[Count] = None  # normaliser N_R (default: number of retain tokens)
    # [N_F] constant per-token weights from the method's weight source (ATWU's learned scores g, a
    # token mask); None: every token weighs 1
    forget_weights: Optional[Tensor] = None
    ref_forget_nll: Optional[Tensor] = None  # [N_F] reference-model NLL (constant; NPO, DPO)
    forget_span_kind: Optional[Tensor] = None  # [N_F] ground-truth span kinds (controls only)
    n_seqs_total: Optional[Count] = None  # sequence-mean normaliser (default: n_forget_seqs)
    # what a method's hooks add for its loss: DPO's preferred answers, RMU's activations, ...
    extras: dict[str, Tensor] = field(default_factory=dict)

    def nf(self) -> Count:
        return self.n_forget if self.n_forget is not None else max(self.forget_nll.numel(), 1)

    def nr(self) -> Count:
        return self.n_retain if self.n_retain is not None else max(self.retain_nll.numel(), 1)

    def nseq(self) -> Count:
        return self.n_seqs_total if self.n_seqs_total is not None else max(self.n_forget_seqs, 1)

    def weighted(self, values: Tensor) -> Tensor:
        """``values`` (per forget token) times the constant token weights, when there are any."""
        return values if self.forget_weights is None else self.forget_weights.detach().to(values.dtype) * values


@dataclass
class LossWeights:
    """total = γ·L_f + α·L_r: the weights every method with a retain term shares."""

    alpha: float = option("retain-loss weight", 1.0)
    gamma: float = option("forget-loss weight", 1.0)


def _from_trainer(name: str, doc: str) -> property:
    return property(lambda self: getattr(self._trainer, name), doc=doc)


class HookContext:
    """What a method's hooks may read and call during training, and nothing else of the trainer: the
    ``loop`` argument of every :class:`TrainingHooks` method. Built by the trainer over itself; a hook
    that reaches for anything not listed here fails at once (AttributeError)."""

    def __init__(self, trainer):
        self._trainer = trainer

    model = _from_trainer("model", "The model being trained (wrapped under DDP / FSDP, adapters injected under LoRA).")
    reference = _from_trainer("reference", "The frozen reference model, a context-manager factory (LoRA), or None.")
    cfg = _from_trainer("cfg", "The ``train`` section (TrainConfig): batch sizes, chunk size, seed.")
    forget = _from_trainer("forget", "The encoded forget rows (``input_ids``, ``labels``, ``span_kind``).")
    retain = _from_trainer("retain", "The encoded retain rows.")
    forget_indices = _from_trainer("forget_indices", "This rank's forget rows of the current micro-batch.")
    retain_indices = _from_trainer("retain_indices", "This rank's retain rows of the current micro-batch.")
    forget_source = _from_trainer("forget_source", "The forget rows as the benchmark has them (their text).")
    dist = _from_trainer("dist", "The distributed context (``enabled``, ``world``, ``rank``, collectives).")
    packing = _from_trainer("packing", "Whether micro-batches are packed into one sequence (padding-free).")

    def batch(self, rows: list[dict]) -> dict[str, Tensor]:
        """Encoded rows as one model-ready batch on the model's device (padded or packed)."""
        return self._trainer.batch(rows)

    def encode(self, question: str, answer: str) -> dict:
        """A new QA row in the benchmark's format (e.g. DPO's alternative answers)."""
        return self._trainer.encode(question, answer)

    def reference_forward(self, rows: list[dict], fn):
        """``fn(reference_model, batch)`` under no_grad on the reference model."""
        return self._trainer.reference_forward(rows, fn)

    def record_nll(self, stats: dict, forget_nll: Tensor, retain_nll: Tensor) -> None:
        """Record a fused head's per-token NLLs in the step statistics."""
        self._trainer.record_nll(stats, forget_nll, retain_nll)


class TrainingHooks:
    """What a method may plug into the unlearning loop; the defaults add nothing.

    ``loop`` is a :class:`HookContext`: the model, options, rows, distributed context and forward
    helpers of the running loop. Per micro-batch the loop calls :meth:`after_forward`
    once the decoder forward has produced the answer tokens; if it returns a loss (a fused LM head
    that computes the NLL itself) that is the micro-batch's loss. Otherwise the loop computes the
    per-token NLL into ``q`` and calls :meth:`before_loss`, whose return value is added to the
    method's loss. :meth:`before_model_step` runs after backward, before clipping and the step.
    """

    def select_parameters(self, model) -> None:
        """Once, before the model is wrapped for data parallelism: freeze what the method does not train."""
        return None

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

    def token_weights(self, tokens, rows: list[dict]) -> Optional[Tensor]:
        """The weights the method puts on evaluated forget tokens (``tokens``: a batch's answer tokens with
        ``.nll``, ``.span_kind`` and ``.hidden(position)``; ``rows``: that batch's encoded rows)."""
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


class CombinedHooks(TrainingHooks):
    """Several hooks in one loop (a method's own and its weight source's), called in order."""

    def __init__(self, parts: list[TrainingHooks]):
        self.parts = parts

    def select_parameters(self, model) -> None:
        for part in self.parts:
            part.select_parameters(model)

    def setup(self, loop) -> list[dict]:
        return [group for part in self.parts for group in part.setup(loop)]

    def after_forward(self, loop, step, tokens, is_forget, q, stats):
        for part in self.parts:
            loss = part.after_forward(loop, step, tokens, is_forget, q, stats)
            if loss is not None:
                return loss
        return None

    def before_loss(self, loop, step, tokens, is_forget, q, stats) -> Tensor:
        return sum((part.before_loss(loop, step, tokens, is_forget, q, stats) for part in self.parts), torch.zeros(()))

    def before_model_step(self, loop) -> None:
        for part in self.parts:
            part.before_model_step(loop)

    def token_weights(self, tokens, rows):
        weights = [w for w in (part.token_weights(tokens, rows) for part in self.parts) if w is not None]
        return weights[-1] if weights else None

    def optimised_modules(self) -> dict[str, torch.nn.Module]:
        return {k: v for part in self.parts for k, v in part.optimised_modules().items()}

    def state_dict(self) -> dict:
        return {k: v for part in self.parts for k, v in part.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        for part in self.parts:
            part.load_state_dict(state)

    def save(self, directory) -> None:
        for part in self.parts:
            part.save(directory)


def combine(*hooks: Optional[TrainingHooks]) -> TrainingHooks:
    parts = [h for h in hooks if h is not None]
    return parts[0] if len(parts) == 1 else CombinedHooks(parts) if parts else TrainingHooks()


@dataclass(frozen=True)
class Method:
    """A registered method: its forget (and retain) loss, its hyper-parameters, what it needs."""

    name: str
    params_type: type  # its hyper-parameter dataclass (the config section ``params_section``)
    forget_loss: Callable[[TokenQuantities, object], Tensor]
    section: str = ""  # config section holding its hyper-parameters (default: the name)
    fixed: dict[str, Any] = field(default_factory=dict)  # section fields this method fixes (variants)
    uses_retain: bool = True
    needs_reference: bool = False
    needs_spans: bool = False  # ground-truth span kinds of the forget tokens (hard-mask controls)
    hooks: Optional[Callable[[object], TrainingHooks]] = None  # hooks(params) for the training loop
    # what its hooks are, if they only supply q.forget_weights (a plug-in weight source replaces them):
    # "learned" (a scorer trained alongside the model) or "mask" (fixed token weights); "": other hooks
    weight_hooks: str = ""
    token_weights: Optional[Callable[[Tensor, object], Tensor]] = None  # w(nll) for span alignment
    retain_loss: Callable[[TokenQuantities, object], Tensor] = None  # L_r (default: the token-mean retain NLL)
    pluggable: bool = False  # its loss reads q.forget_weights: it runs with any weight source (methods.weights)
    doc: str = ""  # formula and source, one line (docs/method.md's method table)
    search: dict[str, Space] = field(default_factory=dict)  # tuning ranges of its own fields (section-relative)

    @property
    def params_section(self) -> str:
        return self.section or self.name

    @property
    def learns_weights(self) -> bool:
        """Its token weights are learned during training (a scorer in its hooks), not a function of the NLL."""
        return self.weight_hooks == "learned"

    @property
    def has_weights(self) -> bool:
        """It puts a weight on each forget token (learned, a mask, or a function of the NLL)."""
        return bool(self.weight_hooks) or self.token_weights is not None

    def search_space(self) -> dict[str, Space]:
        """Dotted config key → range for ``python -m atwu_fast.tune``: the learning rate, γ and the
        method's own ranges; fields the method fixes are not searched. Adam's step is invariant to the
        loss's scale, so with a retain term only the ratio γ/α matters (γ is searched, α stays) and
        without one γ does not matter at all."""
        section = self.params_section
        space: dict[str, Space] = {"train.lr": LR_RANGE}
        if self.uses_retain:
            space[f"{section}.gamma"] = WEIGHT_RANGE
        space.update({f"{section}.{k}": v for k, v in self.search.items()})
        return {k: v for k, v in space.items() if k.split(".", 1)[1] not in self.fixed or k.startswith("train.")}

    def sections(self, cfg) -> Any:
        """Its config section(s) in the experiment config ``cfg``."""
        return getattr(cfg, self.params_section)

    def params(self, section_values) -> Any:
        """The hyper-parameters this method runs with: its config section with :attr:`fixed` applied."""
        return dataclasses.replace(section_values, **self.fixed) if self.fixed else section_values

    def make_hooks(self, params) -> TrainingHooks:
        return self.hooks(params) if self.hooks else TrainingHooks()

    def fixed_values(self) -> dict[str, dict]:
        """Section name -> the fields this method fixes there."""
        return {self.params_section: dict(self.fixed)} if self.fixed else {}

    def ignored_settings(self, section_values) -> list[str]:
        """Section values set away from their defaults that this method overrides (for a warning)."""
        defaults = self.params_type()
        return [f"{self.params_section}.{key}={getattr(section_values, key)!r} (runs with {value!r})"
                for key, value in self.fixed.items()
                if getattr(section_values, key) != getattr(defaults, key) and getattr(section_values, key) != value]

    def loss(self, q: TokenQuantities, params) -> Tensor:
        """total = γ·L_f + α·L_r (L_r the token-mean retain NLL unless the method says otherwise)."""
        total = params.gamma * self.forget_loss(q, params)
        if self.uses_retain and params.alpha != 0:
            retain = self.retain_loss(q, params) if self.retain_loss is not None else retain_nll_mean(q)
            total = total + params.alpha * retain
        return total


def retain_nll_mean(q: TokenQuantities) -> Tensor:
    return q.retain_nll.sum() / q.nr()


def weighted_ascent(q: TokenQuantities, weights: Tensor) -> Tensor:
    """−(1/N_F) Σ_t [w_t]_sg · ℓ_t: gradient ascent on the forget NLL with constant token weights."""
    return -(weights.detach() * q.forget_nll).sum() / q.nf()


def ascent(q: TokenQuantities) -> Tensor:
    """−(1/N_F) Σ_t [w_t]_sg · ℓ_t with the weight source's weights (w ≡ 1 without one)."""
    return -q.weighted(q.forget_nll).sum() / q.nf()


def sequence_sum(values: Tensor, seq: Tensor, n_seqs: int) -> Tensor:
    """Σ over the tokens of each sequence: [N] → [n_seqs] (differentiable)."""
    return torch.zeros(n_seqs, dtype=values.dtype, device=values.device).index_add(0, seq, values)


def sequence_lengths(seq: Tensor, n_seqs: int) -> Tensor:
    return torch.bincount(seq, minlength=n_seqs).to(torch.float32)
