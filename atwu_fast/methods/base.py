"""Per-token quantities shared by every unlearning method, and the helpers methods are built from.

A method is a small pure function ``loss(q, params) -> scalar`` over the per-token NLL of one
forget and one retain micro-batch (valid answer tokens only, flattened). ``q.forget_nll`` and
``q.retain_nll`` carry the gradient to the model; everything else is a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

# span_kind codes: fact tokens whose value retain authors share (pooled), author-unique fact tokens
from ..data.encode import POOLED as POOLED_SPAN
from ..data.encode import UNIQUE as UNIQUE_SPAN

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


@dataclass(frozen=True)
class Method:
    """A registered method: its forget loss, where its hyper-parameters live, what it needs."""

    name: str
    params_section: str  # the ExperimentConfig field holding its hyper-parameters
    forget_loss: Callable[[TokenQuantities, object], Tensor]
    uses_retain: bool = True
    needs_reference: bool = False
    needs_scorer: bool = False
    token_weights: Optional[Callable[[Tensor, object], Tensor]] = None  # w(nll) for span alignment

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
