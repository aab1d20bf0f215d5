"""NPO and SimNPO: sequence-level preference-style forget losses.

With log π(y) = −Σ_t ℓ_t:
    NPO:    L_f = −(2/β)·mean_seq log σ(−β·(log π_θ(y) − log π_ref(y))) = −(2/β)·mean log σ(β·(Σℓ − Σℓ_ref))
    SimNPO: L_f = −(2/β)·mean_seq log σ(β·(Σℓ/|y| − δ))   (no reference model)

With a weight source's token weights w_t the per-token log-ratio is weighted, Σ_t w_t·(ℓ_t − ℓ_ref,t),
and SimNPO's length normalisation becomes the weighted mean Σ_t w_t ℓ_t / Σ_t w_t (w ≡ 1: the above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..config import option
from ..config.search import Float
from .base import LossWeights, Method, TokenQuantities, sequence_lengths, sequence_sum


@dataclass
class NPOParams(LossWeights):
    beta: float = option("inverse temperature", 0.1)


@dataclass
class SimNPOParams(LossWeights):
    gamma: float = option("forget-loss weight", 0.125)
    beta: float = option("inverse temperature", 4.5)
    delta: float = option("reward margin", 0.0)


def npo_loss(q: TokenQuantities, params):
    if q.ref_forget_nll is None:
        raise ValueError("NPO needs the reference model's forget NLL")
    margin = sequence_sum(q.weighted(q.forget_nll - q.ref_forget_nll.detach()), q.forget_seq, q.n_forget_seqs)
    return -(2.0 / params.beta) * F.logsigmoid(params.beta * margin).sum() / q.nseq()


def simnpo_loss(q: TokenQuantities, params):
    if q.forget_weights is None:
        lengths = sequence_lengths(q.forget_seq, q.n_forget_seqs).clamp_min(1).to(q.forget_nll.dtype)
    else:  # a sequence with no weight keeps a zero sum: its margin is −δ and its gradient 0
        lengths = sequence_sum(q.forget_weights.detach().to(q.forget_nll.dtype), q.forget_seq,
                               q.n_forget_seqs).clamp_min(1e-6)
    mean_nll = sequence_sum(q.weighted(q.forget_nll), q.forget_seq, q.n_forget_seqs) / lengths
    return -(2.0 / params.beta) * F.logsigmoid(params.beta * (mean_nll - params.delta)).sum() / q.nseq()


NPO = Method("npo", NPOParams, npo_loss, needs_reference=True, pluggable=True,
             search={"beta": Float(0.02, 1.0, log=True)},
             doc="−(2/β)·mean_seq log σ(β·(Σℓ − Σℓ_ref)), reference = the frozen target (Zhang et al. 2024)")
SIMNPO = Method("simnpo", SimNPOParams, simnpo_loss, pluggable=True,
                search={"beta": Float(0.5, 10.0, log=True), "delta": Float(0.0, 3.0)},
                doc="−(2/β)·mean_seq log σ(β·(Σℓ/|y| − δ)), no reference (Fan et al. 2024)")
