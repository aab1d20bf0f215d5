"""ATWU's token scorer g_t = σ(wᵀh_t + b) and its objective.

The scorer sees detached last hidden states only (it never backpropagates into the LLM), is kept
in fp32, and is trained by SGD on quantities cached from the model's own forward pass:

    L_φ = −(1/N_F) Σ_t g_t·[r_t]_sg + λ_H·mean_t H(g_t) + λ_P·mean_seq(frac_t[g_t > 0.5] − b)² + λ_2·‖w‖²

with reward r_t = ℓ_t·exp(−β_r g_t ℓ_t). Since d/dg (1/β)(p^(βg) − 1) = −ℓ·p^(βg) = −ℓ·exp(−βgℓ),
the first term's gradient in g is that of the model's saturated surrogate: model and scorer do
block-coordinate descent on one joint objective. The budget fraction uses a straight-through
estimator (value of the hard indicator, gradient of g).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .methods.base import sequence_lengths, sequence_sum


class LinearScorer(nn.Module):
    """D + 1 parameters, zero weight; the bias starts at logit(init_score) (0 for g = 0.5)."""

    def __init__(self, hidden_size: int, init_score: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size, dtype=torch.float32))
        self.bias = nn.Parameter(torch.tensor(math.log(init_score / (1.0 - init_score)), dtype=torch.float32))

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.sigmoid(hidden.detach().to(self.weight.dtype) @ self.weight + self.bias)


def binary_entropy(g: Tensor) -> Tensor:
    g = g.clamp(1e-6, 1 - 1e-6)
    return -(g * g.log() + (1 - g) * (1 - g).log())


def scorer_reward(nll: Tensor, scores: Tensor, beta: float, normalise: bool = False) -> Tensor:
    """r_t = ℓ_t·exp(−β g_t ℓ_t), a constant; optionally divided by its batch mean (keeps the ranking)."""
    nll = nll.detach().float()
    reward = nll * torch.exp(-beta * scores.detach().float() * nll)
    if normalise:
        reward = reward / reward.mean().clamp_min(1e-12)
    return reward


@dataclass
class ScorerLoss:
    total: Tensor
    reward_term: Tensor
    entropy: Tensor
    budget: Tensor
    l2: Tensor


def scorer_objective(scorer: LinearScorer, hidden: Tensor, nll: Tensor, seq: Tensor, n_seqs: int, params,
                     n_forget=None) -> ScorerLoss:
    """L_φ on one micro-batch of forget tokens (hidden [N_F, D] at the score position, nll [N_F])."""
    g = scorer(hidden)
    beta_r = params.reward_beta if params.reward_beta is not None else params.beta
    reward = scorer_reward(nll, g, beta_r, params.reward_norm)
    nf = n_forget if n_forget is not None else max(g.numel(), 1)
    reward_term = -(g * reward).sum() / nf
    entropy = binary_entropy(g).mean() if g.numel() else g.sum()
    hard = (g > 0.5).float()
    straight_through = hard + g - g.detach()
    frac = sequence_sum(straight_through, seq, n_seqs) / sequence_lengths(seq, n_seqs).clamp_min(1)
    budget = ((frac - params.budget) ** 2).mean()
    l2 = scorer.weight.pow(2).sum()
    total = reward_term + params.lambda_entropy * entropy + params.lambda_budget * budget + params.lambda_l2 * l2
    return ScorerLoss(total, reward_term.detach(), entropy.detach(), budget.detach(), l2.detach())


class ScorerTrainer:
    """SGD with momentum, weight decay, grad-norm clipping and a linear decay of the lr to 0."""

    def __init__(self, scorer: LinearScorer, params, total_updates: int):
        self.scorer = scorer
        self.params = params
        self.optimizer = torch.optim.SGD(scorer.parameters(), lr=params.scorer_lr, momentum=params.scorer_momentum,
                                         weight_decay=params.scorer_weight_decay)
        total = max(total_updates, 1)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: max(0.0, 1.0 - k / total))
        self.updates = 0

    def step(self, hidden: Tensor, nll: Tensor, seq: Tensor, n_seqs: int) -> ScorerLoss:
        self.optimizer.zero_grad(set_to_none=True)
        loss = scorer_objective(self.scorer, hidden, nll, seq, n_seqs, self.params)
        loss.total.backward()
        if self.params.scorer_max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.scorer.parameters(), self.params.scorer_max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.updates += 1
        return loss
