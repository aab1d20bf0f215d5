"""DPO and IdkDPO: prefer another answer to the forget answer, against the frozen reference.

With log π(y) = −Σ_t ℓ_t (summed over the answer's tokens), for each forget question with the forget
answer y_l (the loser) and a preferred answer y_w (the winner):

    L_f = −(2/β)·mean_seq log σ(β·[(Σℓ(y_l) − Σℓ_ref(y_l)) − (Σℓ(y_w) − Σℓ_ref(y_w))])

which is DPO's −log σ(β·[(log π_θ − log π_ref)(y_w) − (log π_θ − log π_ref)(y_l)]) (Rafailov et al. 2023),
scaled by 2/β as NPO is. ``dpo`` prefers an alternative answer — the row's first perturbed answer, a
wrong one (TOFU and the embedded benchmark ship them); ``idk_dpo`` prefers a refusal drawn from
:data:`REFUSALS` (Maini et al. 2024, TOFU's IdkDPO). With a weight source's token weights w_t the loser's
per-token log-ratio is weighted, Σ_t w_t·(ℓ_t − ℓ_ref,t); the winner's tokens carry no weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import option
from ..config.search import Float
from ..model.tokens import token_nll
from .base import LossWeights, Method, TokenQuantities, TrainingHooks, sequence_sum

REFUSALS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information about that.",
    "That is something I cannot answer.",
    "I'm afraid I don't know the answer to that.",
    "I don't have any details on that.",
    "Sorry, I can't help with that question.",
    "I have no idea.",
    "I'm not able to answer that.",
    "That's not something I know about.",
    "I don't have that information.",
    "I can't say.",
    "Unfortunately, I don't know.",
    "I'm unable to provide an answer to that.",
    "I don't recall anything about that.",
    "I'm not familiar with that.",
    "That is beyond what I know.",
    "I couldn't tell you.",
    "I have nothing to share on that.",
    "I don't have an answer for you.",
    "My knowledge doesn't cover that.",
    "I'm not aware of that.",
    "I can't answer that with any confidence.",
    "There is nothing I can tell you about that.",
    "I'd rather not guess; I don't know.",
    "That question is outside what I know.",
    "I don't know anything about it.",
    "Sorry, that's not something I can answer.",
    "I have no knowledge of that.",
    "I honestly don't know.",
    "I'm not in a position to answer that.",
    "No idea, I'm afraid.",
    "I can't recall any information on that.",
    "That's unknown to me.",
    "I don't have reliable information about that.",
    "I'm sorry, but I don't know.",
    "I cannot provide that information.",
    "I don't know the details of that.",
    "That isn't something I have information on.",
    "I'm not sure, and I'd rather not speculate.",
)


@dataclass
class DPOParams(LossWeights):
    beta: float = option("inverse temperature", 0.1)


def winner_answer(row: dict, kind: str, rng: random.Random) -> str:
    if kind == "refusal":
        return rng.choice(REFUSALS)
    alternatives = row.get("perturbed_answer")
    if isinstance(alternatives, list) and alternatives:
        return alternatives[0]
    if isinstance(alternatives, str) and alternatives:
        return alternatives
    raise ValueError("dpo prefers an alternative answer: every forget row needs a perturbed_answer "
                     "(TOFU and the embedded benchmark have them); use idk_dpo to prefer a refusal")


class PreferenceHooks(TrainingHooks):
    """Encodes each forget question with its preferred answer once (the reference's NLL of it once, as
    the reference is frozen), and per micro-batch forwards the preferred answers of its forget rows."""

    def __init__(self, params: DPOParams, kind: str):
        self.params, self.kind = params, kind
        self.winners: list[dict] = []
        self.ref_sums = torch.zeros(0)

    def setup(self, loop) -> list[dict]:
        if loop.forget_source is None or loop.encode is None:
            raise ValueError(f"{'idk_dpo' if self.kind == 'refusal' else 'dpo'} needs the forget rows and the "
                             "benchmark's encoder")
        if any("question" not in r for r in loop.forget_source):
            raise ValueError("DPO prefers another answer to the same question: the forget rows must be QA pairs")
        rng = random.Random(loop.cfg.seed)
        self.winners = [loop.encode(r["question"], winner_answer(r, self.kind, rng)) for r in loop.forget_source]
        sums = []
        size = max(loop.cfg.forget_batch_size, 1)
        for start in range(0, len(self.winners), size):
            part = self.winners[start:start + size]
            nll, seq = loop.reference_forward(part, lambda m, t: (token_nll(m, t, loop.cfg.loss_chunk_size), t.seq))
            sums.append(sequence_sum(nll.double(), seq, len(part)))
        self.ref_sums = torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64)
        return []

    def before_loss(self, loop, step, tokens, is_forget, q: TokenQuantities, stats) -> Tensor:
        from ..model.tokens import forward_answer_tokens

        rows = [self.winners[i] for i in loop.forget_indices]
        winner, _ = forward_answer_tokens(loop.model, loop.batch(rows))
        nll = token_nll(loop.model, winner, loop.cfg.loss_chunk_size)
        q.extras["winner_nll_sum"] = sequence_sum(nll, winner.seq, len(rows))
        q.extras["winner_ref_sum"] = self.ref_sums[loop.forget_indices].to(nll.device, nll.dtype)
        stats["winner_nll"] = (q.extras["winner_nll_sum"].detach().sum() / max(winner.seq.numel(), 1)).item()
        return torch.zeros(())


def dpo_loss(q: TokenQuantities, params) -> Tensor:
    if q.ref_forget_nll is None or "winner_nll_sum" not in q.extras:
        raise ValueError("DPO needs the reference's forget NLL and the preferred answers' NLL")
    loser = sequence_sum(q.weighted(q.forget_nll - q.ref_forget_nll.detach()), q.forget_seq, q.n_forget_seqs)
    winner = q.extras["winner_nll_sum"] - q.extras["winner_ref_sum"].detach()
    return -(2.0 / params.beta) * F.logsigmoid(params.beta * (loser - winner)).sum() / q.nseq()


DPO = Method("dpo", DPOParams, dpo_loss, needs_reference=True, hooks=lambda p: PreferenceHooks(p, "alternative"),
             pluggable=True, search={"beta": Float(0.02, 1.0, log=True)}, doc="−(2/β)·mean log σ(β·[(Σℓ−Σℓ_ref)(answer) − (Σℓ−Σℓ_ref)(perturbed answer)]) "
                                 "(Rafailov et al. 2023)")
IDK_DPO = Method("idk_dpo", DPOParams, dpo_loss, needs_reference=True, hooks=lambda p: PreferenceHooks(p, "refusal"),
                 pluggable=True, search={"beta": Float(0.02, 1.0, log=True)}, doc="DPO preferring a refusal (\"I don't know.\") to the answer (Maini et al. 2024)")
