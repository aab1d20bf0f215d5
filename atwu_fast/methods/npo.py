"""NPO and SimNPO: sequence-level preference-style forget losses.

With log π(y) = −Σ_t ℓ_t:
    NPO:    L_f = −(2/β)·mean_seq log σ(−β·(log π_θ(y) − log π_ref(y))) = −(2/β)·mean log σ(β·(Σℓ − Σℓ_ref))
    SimNPO: L_f = −(2/β)·mean_seq log σ(β·(Σℓ/|y| − δ))   (no reference model)
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import Method, TokenQuantities, sequence_lengths, sequence_sum


def npo_loss(q: TokenQuantities, params):
    if q.ref_forget_nll is None:
        raise ValueError("NPO needs the reference model's forget NLL")
    margin = sequence_sum(q.forget_nll - q.ref_forget_nll.detach(), q.forget_seq, q.n_forget_seqs)
    return -(2.0 / params.beta) * F.logsigmoid(params.beta * margin).sum() / q.nseq()


def simnpo_loss(q: TokenQuantities, params):
    lengths = sequence_lengths(q.forget_seq, q.n_forget_seqs).clamp_min(1).to(q.forget_nll.dtype)
    mean_nll = sequence_sum(q.forget_nll, q.forget_seq, q.n_forget_seqs) / lengths
    return -(2.0 / params.beta) * F.logsigmoid(params.beta * (mean_nll - params.delta)).sum() / q.nseq()


NPO = Method("npo", "npo", npo_loss, needs_reference=True)
SIMNPO = Method("simnpo", "simnpo", simnpo_loss)
