"""SEUL: selective unlearning of the tokens the model itself finds informative, as a training-free mask.

Before unlearning, each forget answer is scored token by token with the target model's own NLL ℓ_t.
A token is selected when it is surprising within its answer,

    m_t = 1[ℓ_t > μ + k·σ],   μ, σ: mean and std of ℓ over the answer's tokens,

and unselected runs of at most ``max_gap`` tokens between two selected ones are filled (a name or title
split into several tokens is selected whole). This follows Selective Unlearning (Wan et al. 2025,
"Not Every Token Needs Forgetting"): unlearn only the tokens that carry the knowledge, keep the
function words. The mask is computed once and stays fixed.

``seul``: gradient ascent on the selected tokens with the retain term, −(1/N_F) Σ_t m_t ℓ_t + α·L_R.
The same mask serves as a weight source for other losses (``--weights seul``, e.g. ``npo+seul`` or the
saturated hard-mask control ``atwu+seul``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..config import check, option
from ..config.search import Float
from ..model.distributed import run_on
from ..model.tokens import forward_answer_tokens, token_nll
from .base import LossWeights, Method, TrainingHooks, ascent


@dataclass
class SEULParams(LossWeights):
    k: float = option("selection threshold: tokens with NLL above mean + k·std of their answer", 0.5)
    max_gap: int = option("fill unselected runs of at most this many tokens between selected ones", 2)

    def validate(self) -> None:
        check(self.max_gap >= 0, "seul.max_gap must be >= 0")


def select_tokens(nll: Tensor, k: float, max_gap: int) -> Tensor:
    """The 0/1 mask of one answer's tokens (``nll`` [T]): above mean + k·std, gaps ≤ ``max_gap`` filled."""
    nll = nll.detach().double()
    if nll.numel() < 2:
        return torch.ones_like(nll)
    mask = nll > nll.mean() + k * nll.std(unbiased=False)
    picked = torch.nonzero(mask).flatten().tolist()
    for a, b in zip(picked, picked[1:]):
        if 1 < b - a <= max_gap + 1:
            mask[a + 1:b] = True
    return mask.double()


def row_key(row: dict) -> tuple:
    return tuple(row["input_ids"])


class SeulMaskHooks(TrainingHooks):
    """Computes every forget row's mask on the model before unlearning and hands it to the loss as the
    token weights (``q.forget_weights``) of each micro-batch, and to evaluation as the method's weights."""

    def __init__(self, params: SEULParams):
        self.params = params
        self.masks: dict[tuple, Tensor] = {}

    def setup(self, loop) -> list[dict]:
        params = self.params
        with torch.no_grad():
            was_training = loop.model.training
            loop.model.eval()
            size = max(loop.cfg.forget_batch_size, 1)
            for start in range(0, len(loop.forget), size):  # every rank: the same rows, the same forwards
                rows = loop.forget[start:start + size]
                batch = loop.batch(rows)

                def nll_by_row(model, batch=batch):
                    tokens, _ = forward_answer_tokens(model, batch)
                    return token_nll(model, tokens, loop.cfg.loss_chunk_size), tokens.seq

                nll, seq = run_on(loop.model, nll_by_row)
                for i, row in enumerate(rows):
                    self.masks[row_key(row)] = select_tokens(nll[seq == i].cpu(), params.k, params.max_gap)
            loop.model.train(was_training)
        return []

    def mask_of(self, rows: list[dict], device) -> Tensor:
        return torch.cat([self.masks[row_key(r)] for r in rows]).to(device)

    def before_loss(self, loop, step, tokens, is_forget, q, stats) -> Tensor:
        rows = [loop.forget[i] for i in loop.forget_indices]
        q.forget_weights = self.mask_of(rows, q.forget_nll.device).to(q.forget_nll.dtype)
        stats["mask_frac"] = q.forget_weights.mean().item()
        return torch.zeros(())

    def token_weights(self, tokens, rows: list[dict]) -> Optional[Tensor]:
        return self.mask_of(rows, tokens.targets.device).float() if all(row_key(r) in self.masks for r in rows) \
            else None


def seul_loss(q, params):
    return ascent(q)


SEUL = Method("seul", SEULParams, seul_loss, hooks=SeulMaskHooks, weight_hooks="mask", search={"k": Float(-0.5, 2.0)},
              doc="−(1/N_F) Σ m·ℓ + α·retain NLL, m: the target model's surprising tokens (NLL > μ + k·σ, "
                  "gaps ≤ 2 filled; after Wan et al. 2025)")
