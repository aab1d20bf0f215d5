"""UNDIAL: self-distillation toward the frozen model's distribution with the answer token pushed down
(Dong et al. 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning").

For each forget answer token with the reference's logits u_t (the frozen target; with LoRA the
adapter-disabled base) and the model's logits z_t:

    L_f = (1/N_F) Σ_t w_t·CE(softmax(u_t − β·e_{y_t}), softmax(z_t))

a bounded objective (the target distribution is fixed) that moves probability off the answer token
onto the reference's own alternatives. w_t ≡ 1 or a weight source's token weights. The full
vocabulary never materialises: ``atwu_kernels.linear_distillation`` computes the per-token loss from
the two models' hidden states chunk by chunk. total = γ·L_f + α·L_R (α 0 by default: UNDIAL needs no
retain data).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from atwu_kernels.distill import linear_distillation

from ..config import option
from ..config.search import Float
from ..model.tokens import lm_head, logit_transform
from .base import LossWeights, Method, TokenQuantities, TrainingHooks


@dataclass
class UNDIALParams(LossWeights):
    alpha: float = option("retain-loss weight", 0.0)
    beta: float = option("how far the answer token's logit is lowered in the target distribution", 10.0)


class DistillationHooks(TrainingHooks):
    """Per micro-batch: the reference's hidden states of the forget answers, then the per-token
    distillation loss of the model's own hidden states against them (into ``q.extras``)."""

    def __init__(self, params: UNDIALParams):
        self.params = params

    def before_loss(self, loop, step, tokens, is_forget, q: TokenQuantities, stats) -> Tensor:
        rows = [loop.forget[i] for i in loop.forget_indices]
        teacher_hidden, teacher_weight, teacher_bias = loop.reference_forward(
            rows, lambda m, t: (t.hidden_pred, *lm_head(m)))
        weight, bias = lm_head(loop.model)
        loss, _ = linear_distillation(tokens.hidden_pred[is_forget], weight, teacher_hidden, teacher_weight,
                                      tokens.targets[is_forget], shift=self.params.beta, bias=bias,
                                      teacher_bias=teacher_bias, **logit_transform(loop.model))
        q.extras["distill"] = loss
        return torch.zeros(())


def undial_loss(q: TokenQuantities, params) -> Tensor:
    return q.weighted(q.extras["distill"]).sum() / q.nf()


UNDIAL = Method("undial", UNDIALParams, undial_loss, needs_reference=True, hooks=DistillationHooks, pluggable=True,
                search={"beta": Float(1.0, 30.0, log=True)},
                doc="mean CE(softmax(z_ref − β·e_y), softmax(z)) on forget tokens (Dong et al. 2024)")
