"""ATWU's token scorer g_t = σ(wᵀh_t + b) and its objective.

The scorer sees detached last hidden states only (it never backpropagates into the LLM), is kept
in fp32, and is trained by SGD on quantities cached from the model's own forward pass:

    L_φ = −(1/N_F) Σ_t g_t·[r_t]_sg + λ_H·mean_t H(g_t) + λ_P·mean_seq(frac_t[g_t > 0.5] − b)² + λ_2·‖w‖²

with reward r_t = ℓ_t·exp(−β_r g_t ℓ_t) (weighted by λ_reward, 1 by default). An optional
contrast term (λ_C, 0 by default; not in the original method) is the balanced logistic loss of telling the
micro-batch's forget tokens (label 1) from its retain tokens (label 0) by their hidden states:

    λ_C·( mean_{t∈F} softplus(−z_t) + mean_{t∈R} softplus(z_t) ),   z = wᵀh + b

It reads retain conflict off the data the model step already has: a token whose representation
also occurs in retain answers cannot be told apart and stays near the class prior, a token seen
only in forget answers is pushed to g → 1. Since d/dg (1/β)(p^(βg) − 1) = −ℓ·p^(βg) = −ℓ·exp(−βgℓ),
the first term's gradient in g is that of the model's saturated surrogate: model and scorer do
block-coordinate descent on one joint objective. The budget fraction uses a straight-through
estimator (value of the hard indicator, gradient of g).

An optional fit term (λ_fit, 0 by default; not in the original method) fits g to the token's relative
log-loss in the batch, a soft label y_t (see :func:`log_nll_targets`):

    λ_fit·mean_t BCE(g_t, y_t),   y_t = σ((log ℓ_t − μ)/s),   μ, s: mean and std of log ℓ over the batch

Its gradient in the logit z_t is (g_t − y_t), so g is pulled to the best linear-logit fit of a
monotone function of ℓ: the scores rank tokens by loss, but on a log scale, where a few
outliers cannot dominate the fit as they dominate the (heavy-tailed) reward ℓ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import sequence_lengths, sequence_sum


class LinearScorer(nn.Module):
    """D + 1 parameters, zero weight; the bias starts at logit(init_score) (0 for g = 0.5)."""

    def __init__(self, hidden_size: int, init_score: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size, dtype=torch.float32))
        self.bias = nn.Parameter(torch.tensor(math.log(init_score / (1.0 - init_score)), dtype=torch.float32))

    def logits(self, hidden: Tensor) -> Tensor:
        return hidden.detach().to(self.weight.dtype) @ self.weight + self.bias

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(hidden))


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


def log_nll_targets(nll: Tensor, count=None, all_reduce_sum: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Soft labels y_t = σ((x_t − μ)/s) of x_t = log max(ℓ_t, 1e-6), constants.

    μ = Σx/N and s² = Σx²/N − μ² over the batch's N forget tokens (``count``; by default this
    call's tokens), in float64: in float32 the difference loses ~|μ|²/s² ulps, which on an untrained
    model (ℓ ≈ 6 everywhere, s ≈ 0.03) left ~1e-3 relative error in s and labels that depended on
    the summation order (one process vs ranks). With ``all_reduce_sum`` the two sums are taken over
    every rank, so each rank standardises by the global batch statistics. y is monotone in ℓ: it
    keeps ℓ's ranking, has mean ≈ 1/2 and does not depend on the scale of ℓ.
    """
    x = nll.detach().double().clamp_min(1e-6).log()  # float64: Σx²/N − μ² cancels when s ≪ |μ|
    sums = torch.stack([x.sum(), x.pow(2).sum()])
    if all_reduce_sum is not None:
        sums = all_reduce_sum(sums.clone())
    n = count if count is not None else max(x.numel(), 1)
    mean = sums[0] / n
    std = (sums[1] / n - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
    return torch.sigmoid((x - mean) / std).float()


def mean_rescale_factor(scores: Tensor, target: float, count=None,
                        all_reduce_sum: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """c = target / ḡ, ḡ = Σ_t g_t / N over the batch's N forget tokens (``count``; by default this
    call's tokens; with ``all_reduce_sum`` the sum is taken over every rank). A constant."""
    total = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)).sum()
    if all_reduce_sum is not None:
        total = all_reduce_sum(total.clone())
    n = count if count is not None else max(scores.numel(), 1)
    return target / (total / n).clamp_min(1e-6)


def rescale_to_mean(scores: Tensor, target: float, count=None,
                    all_reduce_sum: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """The model step's scores with their batch mean set to ``target``: g'_t = min(1, c·g_t), c = target/ḡ.

    Separates the scorer's ranking from its magnitude. ATWU's forget term has the θ-gradient of the
    bounded surrogate (γ/β)·mean_t p_t^(β g_t); for a token not yet forgotten (p ≈ 1) its push is
    γ·g_t/N_F, so the total push on a memorised batch is γ·ḡ. Two scorers with the same ranking but
    different ḡ therefore unlearn at different speeds, as if γ (and, through the exponent, β) were
    scaled by ḡ. Multiplying every g by one batch constant c keeps the ranking and the per-token
    saturation semantics exactly: g' is a valid score, the token's weight is g'·p^(β g') and its
    surrogate (1/β)(p^(β g') − 1), i.e. ATWU with scores g'. With c = target/ḡ the total push at
    p ≈ 1 is γ·target whatever the scorer's level: the scorer only redistributes a fixed push
    (target = 0.5 is the frozen control's g ≡ 0.5). The clip at 1 keeps g' ≤ 1 (no token pushed
    harder than g = 1), so the mean is target exactly when max g ≤ ḡ/target and below it otherwise.
    c is a constant (no gradient), and the scorer's own objective still sees the raw g.
    """
    c = mean_rescale_factor(scores, target, count, all_reduce_sum)
    return (scores * c).clamp(max=1.0)


def fit_loss(logits: Tensor, targets: Tensor, count) -> Tensor:
    """Σ_t BCE(σ(z_t), y_t) / count; d/dz_t = (σ(z_t) − y_t) / count."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / count


@dataclass
class ScorerLoss:
    total: Tensor
    reward_term: Tensor
    entropy: Tensor
    budget: Tensor
    l2: Tensor
    contrast: Tensor
    fit: Tensor


def contrast_loss(scorer: LinearScorer, hidden_forget: Tensor, hidden_retain: Optional[Tensor],
                  n_forget=None, n_retain=None) -> Tensor:
    """Balanced logistic loss: forget tokens labelled 1, retain tokens 0 (each class averaged over
    ``n_forget`` / ``n_retain`` tokens, by default this call's counts)."""
    z_f = scorer.logits(hidden_forget)
    loss = F.softplus(-z_f).sum() / (n_forget if n_forget is not None else max(z_f.numel(), 1))
    if hidden_retain is not None and hidden_retain.numel():
        z_r = scorer.logits(hidden_retain)
        loss = loss + F.softplus(z_r).sum() / (n_retain if n_retain is not None else z_r.numel())
    return loss


@dataclass
class ScorerNorms:
    """Global normalisers of the scorer objective in a distributed run (see atwu_fast.distributed):
    token and sequence counts summed over ranks, an all-reduce for the reward's batch mean, and the
    world size (the L2 term is split over ranks so that the summed gradient counts it once)."""

    n_forget: Tensor
    n_retain: Tensor
    n_seqs: Tensor
    world: int
    all_reduce_sum: Callable[[Tensor], Tensor]


def scorer_objective(scorer: LinearScorer, hidden: Tensor, nll: Tensor, seq: Tensor, n_seqs: int, params,
                     n_forget=None, hidden_retain: Optional[Tensor] = None,
                     norms: Optional[ScorerNorms] = None) -> ScorerLoss:
    """L_φ on one micro-batch of forget tokens (hidden [N_F, D] at the score position, nll [N_F]);
    ``hidden_retain`` [N_R, D] (the retain tokens at the same position) feeds the contrast term.
    Every mean is a sum over this call's tokens (sequences) divided by a count, so that with
    ``norms`` the per-rank objectives add up to the single-process objective."""
    g = scorer(hidden)
    n_retain_tokens = hidden_retain.shape[0] if hidden_retain is not None else 0
    if norms is None:
        nf = n_forget if n_forget is not None else max(g.numel(), 1)
        nr, ns, world = max(n_retain_tokens, 1), max(n_seqs, 1), 1
    else:
        nf, nr, ns, world = norms.n_forget, norms.n_retain, norms.n_seqs, norms.world
    beta_r = params.reward_beta if params.reward_beta is not None else params.beta
    reward = scorer_reward(nll, g, beta_r)
    if params.reward_norm:  # divide by the batch mean: the ranking within the batch is unchanged
        total_reward = reward.sum()
        if norms is not None:
            total_reward = norms.all_reduce_sum(total_reward.clone())
        reward = reward / (total_reward / nf).clamp_min(1e-12)
    reward_term = -(g * reward).sum() / nf
    lambda_reward = getattr(params, "lambda_reward", 1.0)
    lambda_contrast = getattr(params, "lambda_contrast", 0.0)
    contrast = contrast_loss(scorer, hidden, hidden_retain, nf, nr) if lambda_contrast else torch.zeros(())
    lambda_fit = getattr(params, "lambda_fit", 0.0)
    fit = torch.zeros(())
    if lambda_fit:
        targets = log_nll_targets(nll, nf, norms.all_reduce_sum if norms is not None else None)
        fit = fit_loss(scorer.logits(hidden), targets, nf)
    entropy = binary_entropy(g).sum() / nf
    hard = (g > 0.5).float()
    straight_through = hard + g - g.detach()
    frac = sequence_sum(straight_through, seq, n_seqs) / sequence_lengths(seq, n_seqs).clamp_min(1)
    budget = ((frac - params.budget) ** 2).sum() / ns
    l2 = scorer.weight.pow(2).sum() / world
    total = (lambda_reward * reward_term + params.lambda_entropy * entropy + params.lambda_budget * budget
             + params.lambda_l2 * l2)
    if lambda_contrast:
        total = total + lambda_contrast * contrast
    if lambda_fit:
        total = total + lambda_fit * fit
    return ScorerLoss(total, reward_term.detach(), entropy.detach(), budget.detach(), l2.detach(), contrast.detach(),
                      fit.detach())


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

    def step(self, hidden: Tensor, nll: Tensor, seq: Tensor, n_seqs: int,
             hidden_retain: Optional[Tensor] = None, norms: Optional[ScorerNorms] = None) -> ScorerLoss:
        """One SGD step; with ``norms`` (distributed) the gradient is summed over ranks first, so
        every rank takes the same step on the global objective."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = scorer_objective(self.scorer, hidden, nll, seq, n_seqs, self.params, hidden_retain=hidden_retain,
                                norms=norms)
        loss.total.backward()
        if norms is not None:
            for p in self.scorer.parameters():
                norms.all_reduce_sum(p.grad)
        if self.params.scorer_max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.scorer.parameters(), self.params.scorer_max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.updates += 1
        return loss


def pretrain_scorer(scorer: LinearScorer, params, hidden: Tensor, nll: Tensor, seq: Tensor, n_seqs: int,
                    hidden_retain: Optional[Tensor] = None, steps: int = 0) -> list[float]:
    """``steps`` full-batch scorer SGD steps on the target model's cached, detached forget (and
    retain) quantities, with the same objective and optimiser settings as during unlearning (its
    own linear lr decay over ``steps``). Returns the objective per step."""
    trainer = ScorerTrainer(scorer, params, steps)
    return [trainer.step(hidden, nll, seq, n_seqs, hidden_retain).total.item() for _ in range(steps)]
