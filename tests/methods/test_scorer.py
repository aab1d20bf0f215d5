"""ATWU scorer: initial state, objective gradients (numerical and analytic), schedule semantics."""

import math

import pytest
import torch

from atwu_fast.methods.atwu.params import ATWUParams
from atwu_fast.methods.atwu.scorer import LinearScorer, ScorerTrainer, binary_entropy, scorer_objective, scorer_reward


def batch(seed=0, n=13, d=6):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    nll = torch.rand(n, generator=g, dtype=torch.float64) * 3
    seq = torch.tensor([0] * 5 + [1] * 6 + [2] * (n - 11))
    return hidden, nll, seq


def double_scorer(d=6, seed=1):
    scorer = LinearScorer(d).double()
    with torch.no_grad():
        scorer.weight.copy_(torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.5)
        scorer.bias.fill_(0.1)
    return scorer


def test_zero_initialised_scorer_gives_one_half_and_detaches_input():
    scorer = LinearScorer(8)
    h = torch.randn(4, 8, requires_grad=True)
    g = scorer(h)
    assert torch.allclose(g, torch.full((4,), 0.5))
    g.sum().backward()
    assert h.grad is None  # the scorer never backpropagates into the LLM
    assert scorer.weight.dtype == torch.float32


def test_objective_gradient_matches_finite_differences_without_budget():
    """The budget's straight-through estimator is not a true gradient, so check it separately."""
    hidden, nll, seq = batch()
    scorer = double_scorer()
    params = ATWUParams(lambda_budget=0.0, lambda_entropy=0.7, lambda_l2=0.3, beta=2.0)

    def objective(w, b):
        g = torch.sigmoid(hidden @ w + b)
        # the reward is a constant evaluated at the current g (stop-gradient)
        reward = scorer_reward(nll, torch.sigmoid(hidden @ scorer.weight + scorer.bias), params.beta)
        return (-(g * reward).sum() / len(g) + params.lambda_entropy * binary_entropy(g).mean()
                + params.lambda_l2 * (w ** 2).sum())

    loss = scorer_objective(scorer, hidden, nll, seq, 3, params)
    loss.total.backward()
    w0, b0 = scorer.weight.detach().clone(), scorer.bias.detach().clone()
    assert loss.total.item() == pytest.approx(objective(w0, b0).item(), rel=1e-12)
    eps = 1e-6
    for i in range(len(w0)):
        e = torch.zeros_like(w0)
        e[i] = eps
        numeric = (objective(w0 + e, b0) - objective(w0 - e, b0)) / (2 * eps)
        assert scorer.weight.grad[i].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-8)
    numeric_b = (objective(w0, b0 + eps) - objective(w0, b0 - eps)) / (2 * eps)
    assert scorer.bias.grad.item() == pytest.approx(numeric_b.item(), rel=1e-5, abs=1e-8)


def test_reward_term_gradient_is_that_of_the_saturated_surrogate():
    """d/dg of −(1/N)Σ g·[ℓ e^(−βgℓ)]_sg equals d/dg of (1/β)·mean(p^(βg) − 1)."""
    _, nll, _ = batch()
    g = torch.rand_like(nll).requires_grad_()
    beta = 3.0
    reward = scorer_reward(nll, g, beta)
    (ga,) = torch.autograd.grad(-(g * reward).sum() / len(g), g)
    (gb,) = torch.autograd.grad(((torch.exp(-nll) ** (beta * g) - 1) / beta).mean(), g)
    assert torch.allclose(ga, gb, rtol=1e-12)


def test_budget_straight_through_gradient():
    """frac per sequence takes the hard value; its gradient is that of mean_t g_t."""
    hidden, nll, seq = batch()
    scorer = double_scorer()
    params = ATWUParams(lambda_budget=10.0, lambda_entropy=0.0, lambda_l2=0.0, budget=0.2)
    params_no_budget = ATWUParams(lambda_budget=0.0, lambda_entropy=0.0, lambda_l2=0.0)
    loss = scorer_objective(scorer, hidden, nll, seq, 3, params)
    base = scorer_objective(scorer, hidden, nll, seq, 3, params_no_budget)
    g = torch.sigmoid(hidden @ scorer.weight + scorer.bias).detach()
    lengths = torch.bincount(seq).double()
    frac = torch.zeros(3, dtype=torch.float64).index_add(0, seq, (g > 0.5).double()) / lengths
    assert loss.budget.item() == pytest.approx(((frac - 0.2) ** 2).mean().item(), rel=1e-12)
    (grad_w,) = torch.autograd.grad(loss.total - base.total, scorer.weight)
    # d/dw λ·mean_s (frac_s − b)² with dfrac_s/dw = (1/n_s) Σ_{t∈s} g_t(1−g_t) h_t
    coeff = 10.0 * 2 * (frac - 0.2) / 3 / lengths
    expected = ((coeff[seq] * g * (1 - g))[:, None] * hidden).sum(0)
    assert torch.allclose(grad_w, expected, rtol=1e-10)


def test_reward_normalisation_keeps_the_ranking():
    _, nll, _ = batch(seed=4, n=40)
    g = torch.rand_like(nll)
    raw = scorer_reward(nll, g, 5.0)
    normalised = scorer_reward(nll, g, 5.0, normalise=True)
    assert torch.equal(torch.argsort(raw), torch.argsort(normalised))
    assert normalised.mean().item() == pytest.approx(1.0)


def test_scorer_trainer_lr_decays_linearly_to_zero_and_clips():
    hidden, nll, seq = batch()
    scorer = LinearScorer(6).double()
    params = ATWUParams(scorer_lr=0.05, scorer_max_grad_norm=1e-3)
    trainer = ScorerTrainer(scorer, params, total_updates=4)
    lrs = []
    for _ in range(4):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        before = torch.cat([scorer.weight.detach().clone(), scorer.bias.detach().view(1).clone()])
        trainer.step(hidden, nll, seq, 3)
        after = torch.cat([scorer.weight.detach(), scorer.bias.detach().view(1)])
        # first step without momentum history: |Δ| ≤ lr·(clip + weight-decay term)
        assert (after - before).norm() <= lrs[-1] * 1e-3 * 1.5 + 1e-12 or len(lrs) > 1
    assert lrs == pytest.approx([0.05, 0.0375, 0.025, 0.0125])
    assert trainer.updates == 4


def test_init_score_sets_bias():
    scorer = LinearScorer(4, init_score=0.2)
    assert scorer.bias.item() == pytest.approx(math.log(0.2 / 0.8))
