"""Semantics of the scorer-study options: contrast term, reward weight, pre-training, variants."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_scorer import double_scorer
from tiny_unlearning import tiny_data, tiny_model

from atwu_fast.config import METHOD_NAMES, ATWUParams, TrainConfig
from atwu_fast.methods import METHODS, get_method, variant_params
from atwu_fast.methods.atwu import FAITHFUL, NLL_TRACKING
from atwu_fast.scorer import LinearScorer, pretrain_scorer, scorer_objective, scorer_reward
from atwu_fast.trainer import Unlearner


def batch(seed=0, n=13, d=6):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    nll = torch.rand(n, generator=g, dtype=torch.float64) * 3
    seq = torch.tensor([0] * 5 + [1] * 6 + [2] * (n - 11))
    retain = torch.randn(9, d, generator=g, dtype=torch.float64)
    return hidden, nll, seq, retain


def test_every_registered_method_is_a_config_name():
    assert set(METHODS) == set(METHOD_NAMES)


def test_defaults_are_the_faithful_objective_terms():
    p = ATWUParams()
    assert (p.lambda_reward, p.lambda_contrast, p.pretrain_steps) == (1.0, 0.0, 0)


def test_contrast_term_is_balanced_logistic_loss():
    hidden, nll, seq, retain = batch()
    scorer = double_scorer()
    off = dict(lambda_entropy=0.0, lambda_budget=0.0, lambda_l2=0.0)
    only = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams(lambda_reward=0.0, lambda_contrast=2.0, **off),
                            hidden_retain=retain)
    z_f = hidden @ scorer.weight + scorer.bias
    z_r = retain @ scorer.weight + scorer.bias
    expected = 2.0 * (F.softplus(-z_f).mean() + F.softplus(z_r).mean())
    assert only.total.item() == pytest.approx(expected.item(), rel=1e-12)
    # the contrast term adds to the faithful objective; λ_C = 0 leaves it bit-identical
    faithful = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams(), hidden_retain=retain)
    plain = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams())
    both = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams(lambda_contrast=2.0), hidden_retain=retain)
    assert torch.equal(faithful.total, plain.total)
    assert both.total.item() == pytest.approx(faithful.total.item() + expected.item(), rel=1e-12)


def test_lambda_reward_scales_only_the_reward_term():
    hidden, nll, seq, _ = batch()
    scorer = double_scorer()
    a = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams())
    b = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams(lambda_reward=0.25))
    assert (a.total - b.total).item() == pytest.approx(0.75 * a.reward_term.item(), rel=1e-10)


def test_contrast_separates_forget_only_directions():
    """Forget tokens = shared rows + rows along a forget-only direction; retain = shared rows.
    Training on the contrast term alone ranks the forget-only rows above the shared ones."""
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(40, 8, generator=g)
    unique = torch.randn(10, 8, generator=g) * 0.3
    unique[:, 0] += 3.0
    hidden = torch.cat([shared[:20], unique])
    seq = torch.arange(len(hidden)) % 5
    scorer = LinearScorer(8)
    params = ATWUParams(lambda_reward=0.0, lambda_contrast=1.0, lambda_entropy=0.0, lambda_budget=0.0, lambda_l2=0.0)
    pretrain_scorer(scorer, params, hidden, torch.ones(len(hidden)), seq, 5, shared[20:], steps=200)
    fresh_shared = torch.randn(50, 8, generator=g)
    fresh_unique = torch.randn(50, 8, generator=g) * 0.3
    fresh_unique[:, 0] += 3.0
    assert scorer(fresh_unique).min() > scorer(fresh_shared).median()
    assert scorer(fresh_unique).mean() > 0.8


def test_pretrain_scorer_steps_and_decays_to_zero():
    hidden, nll, seq, retain = batch()
    scorer = LinearScorer(6).double()
    losses = pretrain_scorer(scorer, ATWUParams(lambda_contrast=1.0), hidden, nll, seq, 3, retain, steps=7)
    assert len(losses) == 7
    assert scorer.weight.abs().sum() > 0


def test_variant_params():
    p = ATWUParams(update_every=3, lambda_contrast=0.5, pretrain_steps=9)
    assert variant_params("atwu", p) == p
    f = variant_params("atwu_faithful", p)
    assert (f.lambda_reward, f.lambda_contrast, f.pretrain_steps, f.update_every) == (1.0, 0.0, 9, 3)
    assert variant_params("atwu_frozen", p).schedule == "frozen"
    assert variant_params("atwu_frozen", p).pretrain_steps == 0
    c = variant_params("atwu_nll", ATWUParams())
    assert all(getattr(c, k) == v for k, v in NLL_TRACKING.items())
    assert all(getattr(f, k) == v for k, v in FAITHFUL.items())


# --------------------------------------------------------------------------- in the trainer


@pytest.fixture(scope="module")
def tiny():
    tok, enc = tiny_data()
    return tok, enc, tiny_model(tok)


def make(tiny, method, params, **train):
    tok, enc, base = tiny
    copy = tiny_model(tok, base.state_dict())
    cfg = TrainConfig(**{"steps": 3, "forget_batch_size": 4, "retain_batch_size": 4, "lr": 1e-2, **train})
    return Unlearner(copy, get_method(method), params, cfg, enc["forget"], enc["retain"], tok.pad_token_id)


def test_pretraining_moves_the_scorer_before_the_first_step_and_not_the_model(tiny):
    params = ATWUParams(pretrain_steps=5, lambda_contrast=1.0, schedule="frozen")
    before = {k: v.clone() for k, v in tiny[2].state_dict().items()}
    unlearner = make(tiny, "atwu", params)
    assert len(unlearner.pretrain_losses) == 5
    assert unlearner.scorer.weight.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in unlearner.model.state_dict().items())
    w = unlearner.scorer.weight.clone()
    unlearner.run()
    assert torch.equal(unlearner.scorer.weight, w)  # frozen after pre-training


def test_atwu_frozen_ignores_pretraining_and_contrast(tiny):
    params = ATWUParams(pretrain_steps=5, lambda_contrast=1.0)
    unlearner = make(tiny, "atwu_frozen", params)
    result = unlearner.run()
    assert torch.count_nonzero(result.scorer.weight) == 0
    assert all(h["score_mean"] == pytest.approx(0.5) for h in result.history)


@pytest.mark.parametrize("schedule", ["alternating", "joint"])
def test_contrast_fused_equals_unfused(tiny, schedule):
    params = ATWUParams(lambda_contrast=1.0, update_every=1, schedule=schedule)
    runs = []
    for fused in (True, False):
        unlearner = make(tiny, "atwu", params, fused_head=fused)
        result = unlearner.run()
        runs.append((result.scorer.weight.detach().clone(), [h["loss"] for h in result.history]))
    assert torch.allclose(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-4, abs=1e-6)


def test_contrast_method_uses_retain_hidden_states(tiny):
    """With only the contrast term, the scorer's first update differs from a run without retain rows."""
    params = dataclasses.replace(ATWUParams(), lambda_reward=0.0, lambda_contrast=1.0, lambda_entropy=0.0,
                                 lambda_budget=0.0, lambda_l2=0.0, update_every=1)
    unlearner = make(tiny, "atwu", params, steps=1)
    unlearner.run()
    w = unlearner.scorer.weight.detach().clone()
    assert w.abs().sum() > 0


def test_reward_beta_zero_is_the_unsaturated_nll():
    _, nll, _, _ = batch()
    g = torch.rand_like(nll)
    assert torch.equal(scorer_reward(nll, g, 0.0), nll.float())
    normalised = scorer_reward(nll, g, 0.0, normalise=True)
    assert torch.allclose(normalised, (nll / nll.mean()).float())
