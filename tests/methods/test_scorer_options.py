"""Semantics of the scorer-study options: contrast term, reward weight, log-loss fit, pre-training, variants."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from test_scorer import double_scorer
from tiny_unlearning import tiny_data, tiny_model

from atwu_fast.methods import METHODS, get_method
from atwu_fast.methods.atwu import FAITHFUL, LOG_FIT, NLL_TRACKING
from atwu_fast.methods.atwu.params import ATWUParams
from atwu_fast.methods.atwu.scorer import (
    LinearScorer,
    ScorerNorms,
    log_nll_targets,
    mean_rescale_factor,
    pretrain_scorer,
    rescale_to_mean,
    scorer_objective,
    scorer_reward,
)
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.trainer import Unlearner


def batch(seed=0, n=13, d=6):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    nll = torch.rand(n, generator=g, dtype=torch.float64) * 3
    seq = torch.tensor([0] * 5 + [1] * 6 + [2] * (n - 11))
    retain = torch.randn(9, d, generator=g, dtype=torch.float64)
    return hidden, nll, seq, retain


def test_every_registered_method_has_its_config_section_and_is_in_methods_all():
    from atwu_fast.unlearn.experiment import ExperimentConfig

    cfg = ExperimentConfig(methods=["all"])
    assert cfg.method_list() == list(METHODS)
    for method in METHODS.values():
        assert isinstance(getattr(cfg, method.params_section), method.params_type)
        method.params(method.sections(cfg))  # plug-in pairs resolve their loss's and their source's sections


def test_defaults_are_the_faithful_objective_terms():
    p = ATWUParams()
    assert (p.lambda_reward, p.lambda_contrast, p.lambda_fit, p.pretrain_steps) == (1.0, 0.0, 0.0, 0)


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
    assert get_method("atwu").params(p) == p
    f = get_method("atwu_faithful").params(p)
    assert (f.lambda_reward, f.lambda_contrast, f.pretrain_steps, f.update_every) == (1.0, 0.0, 9, 3)
    assert get_method("atwu_frozen").params(p).schedule == "frozen"
    assert get_method("atwu_frozen").params(p).pretrain_steps == 0
    c = get_method("atwu_nll").params(ATWUParams())
    assert all(getattr(c, k) == v for k, v in NLL_TRACKING.items())
    lf = get_method("atwu_logfit").params(ATWUParams(lambda_fit=0.0, lambda_entropy=3.0, alpha=0.7))
    assert all(getattr(lf, k) == v for k, v in LOG_FIT.items())
    assert (lf.lambda_fit, lf.lambda_reward, lf.lambda_entropy, lf.lambda_budget) == (1.0, 0.0, 0.0, 0.0)
    assert lf.alpha == 0.7  # the model loss is not fixed by the variant
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
    assert len(unlearner.hooks.pretrain_losses) == 5
    assert unlearner.hooks.scorer.weight.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in unlearner.model.state_dict().items())
    w = unlearner.hooks.scorer.weight.clone()
    unlearner.run()
    assert torch.equal(unlearner.hooks.scorer.weight, w)  # frozen after pre-training


def test_atwu_frozen_ignores_pretraining_and_contrast(tiny):
    params = ATWUParams(pretrain_steps=5, lambda_contrast=1.0)
    unlearner = make(tiny, "atwu_frozen", params)
    result = unlearner.run()
    assert torch.count_nonzero(unlearner.hooks.scorer.weight) == 0
    assert all(h["score_mean"] == pytest.approx(0.5) for h in result.history)


@pytest.mark.parametrize("params", [
    ATWUParams(lambda_contrast=1.0, update_every=1, schedule="alternating"),
    ATWUParams(lambda_contrast=1.0, update_every=1, schedule="joint"),
    ATWUParams(**{**LOG_FIT, "pretrain_steps": 2}, scorer_labels="target"),
], ids=["contrast-alternating", "contrast-joint", "logfit-target-labels"])
def test_scorer_fused_equals_unfused(tiny, params):
    runs = []
    for fused in (True, False):
        unlearner = make(tiny, "atwu", params, fused_head=fused)
        result = unlearner.run()
        runs.append((unlearner.hooks.scorer.weight.detach().clone(), [h["loss"] for h in result.history]))
    assert torch.allclose(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-4, abs=1e-6)


def test_contrast_method_uses_retain_hidden_states(tiny):
    """With only the contrast term, the scorer's first update differs from a run without retain rows:
    the retain tokens' mean hidden state enters w's step and their term cancels the forget tokens' pull
    on the bias (both classes sit at g = 0.5 when the scorer starts at w = 0, b = 0)."""
    params = dataclasses.replace(ATWUParams(), lambda_reward=0.0, lambda_contrast=1.0, lambda_entropy=0.0,
                                 lambda_budget=0.0, lambda_l2=0.0, update_every=1)

    def first_update(drop_retain):
        unlearner = make(tiny, "atwu", params, steps=1)
        seen = {}
        original = unlearner.hooks.trainer.step

        def step(hidden, nll, seq, n_seqs, hidden_retain=None, norms=None):
            if drop_retain:
                hidden_retain = None
            seen.update(forget=hidden.detach().clone(), retain=hidden_retain)
            return original(hidden, nll, seq, n_seqs, hidden_retain, norms)

        unlearner.hooks.trainer.step = step
        unlearner.run()
        scorer = unlearner.hooks.scorer
        return scorer.weight.detach().double(), scorer.bias.detach().double(), seen

    w_with, b_with, seen_with = first_update(drop_retain=False)
    w_without, b_without, seen_without = first_update(drop_retain=True)
    assert seen_with["retain"] is not None and seen_with["retain"].shape[0] > 0
    assert torch.equal(seen_with["forget"], seen_without["forget"])  # same model, same batch: only retain differs

    def expected(h_f, h_r):
        # first SGD step from w = 0, b = 0 (momentum buffer = gradient, weight decay × 0 = 0), every g = 0.5:
        # ∂/∂z softplus(−z) = −0.5 on forget tokens, ∂/∂z softplus(z) = +0.5 on retain tokens, each class
        # averaged over its own count; then the gradient-norm clip (max_norm / (norm + 1e-6), capped at 1)
        h_f = h_f.double()
        grad_w, grad_b = -0.5 * h_f.mean(0), torch.tensor(-0.5, dtype=torch.float64)
        if h_r is not None:
            grad_w, grad_b = grad_w + 0.5 * h_r.double().mean(0), grad_b + 0.5
        norm = torch.sqrt(grad_w.pow(2).sum() + grad_b ** 2)
        clip = min(1.0, params.scorer_max_grad_norm / (norm.item() + 1e-6))
        return -params.scorer_lr * clip * grad_w, -params.scorer_lr * clip * grad_b

    # fp32 engine vs this float64 formula: each gradient entry is a sum of N fp32 terms (N ≤ a few hundred
    # answer tokens), relative error ≤ N·2⁻²⁴ ≈ 2e-5, on a step of size ≤ scorer_lr = 0.05 → atol 1e-6
    ew, eb = expected(seen_with["forget"], seen_with["retain"])
    assert torch.allclose(w_with, ew, rtol=0, atol=1e-6) and abs(b_with.item() - eb.item()) <= 1e-6
    ew, eb = expected(seen_without["forget"], None)
    assert torch.allclose(w_without, ew, rtol=0, atol=1e-6) and abs(b_without.item() - eb.item()) <= 1e-6
    # the comparison itself: the retain rows change the step far beyond that tolerance
    assert (w_with - w_without).abs().max() > 1e-3
    assert b_with.abs() <= 1e-6 < 1e-3 < b_without  # balanced classes: no pull on the bias; forget only: b rises


def test_reward_beta_zero_is_the_unsaturated_nll():
    _, nll, _, _ = batch()
    g = torch.rand_like(nll)
    assert torch.equal(scorer_reward(nll, g, 0.0), nll.float())
    normalised = scorer_reward(nll, g, 0.0, normalise=True)
    assert torch.allclose(normalised, (nll / nll.mean()).float())


# --------------------------------------------------------------------------- log-loss fit


def test_log_nll_targets_are_sigmoid_of_standardised_log_loss():
    _, nll, _, _ = batch()
    x = [math.log(max(v, 1e-6)) for v in nll.tolist()]
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))  # population std
    expected = [1 / (1 + math.exp(-(v - mean) / std)) for v in x]
    assert log_nll_targets(nll).tolist() == pytest.approx(expected, rel=1e-5)


def test_log_nll_targets_keep_the_ranking_and_ignore_powers_of_the_loss():
    """Standardising log ℓ (not ℓ): ℓ ↦ c·ℓ^k (c, k > 0) gives the same labels; order is kept."""
    _, nll, _, _ = batch()
    y = log_nll_targets(nll)
    assert torch.equal(torch.argsort(y), torch.argsort(nll.float()))
    assert torch.allclose(log_nll_targets(5.0 * nll ** 3), y, atol=1e-5)
    # a linear standardisation of ℓ would not be invariant to the power
    z = (nll ** 3 - (nll ** 3).mean()) / (nll ** 3).std(unbiased=False)
    assert not torch.allclose(torch.sigmoid(z).float(), y, atol=1e-2)


def test_log_nll_targets_use_global_statistics_with_all_reduce():
    _, nll, _, _ = batch()
    a, b = nll[:6], nll[6:]
    def sums(part):
        x = part.float().clamp_min(1e-6).log()
        return torch.stack([x.sum(), x.pow(2).sum()])
    ya = log_nll_targets(a, len(nll), lambda t: t + sums(b))
    yb = log_nll_targets(b, len(nll), lambda t: t + sums(a))
    assert torch.allclose(torch.cat([ya, yb]), log_nll_targets(nll), atol=1e-6)


def test_fit_term_is_cross_entropy_to_the_soft_labels():
    hidden, nll, seq, _ = batch()
    scorer = double_scorer()
    off = dict(lambda_reward=0.0, lambda_entropy=0.0, lambda_budget=0.0, lambda_l2=0.0)
    out = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams(lambda_fit=2.0, **off))
    z = hidden @ scorer.weight + scorer.bias
    y = log_nll_targets(nll).double()
    expected = 2.0 * F.binary_cross_entropy_with_logits(z, y)
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.fit.item() == pytest.approx(expected.item() / 2, rel=1e-6)
    out.total.backward()
    # d/dw = λ·mean_t (g_t − y_t)·h_t
    grad = 2.0 * ((torch.sigmoid(z) - y).detach()[:, None] * hidden).mean(0)
    assert torch.allclose(scorer.weight.grad, grad, rtol=1e-5)


def test_lambda_fit_adds_to_the_objective_and_zero_leaves_it_bit_identical():
    hidden, nll, seq, _ = batch()
    scorer = double_scorer()
    faithful = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams())
    zero = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams(lambda_fit=0.0))
    both = scorer_objective(scorer, hidden, nll, seq, 3, ATWUParams(lambda_fit=0.5))
    assert torch.equal(faithful.total, zero.total)
    assert both.total.item() == pytest.approx(faithful.total.item() + 0.5 * both.fit.item(), rel=1e-10)


def test_fit_term_matches_across_ranks():
    """Two halves with ScorerNorms (global counts, summed statistics) add up to the single objective."""
    hidden, nll, seq, _ = batch()
    scorer = double_scorer()
    params = ATWUParams(lambda_fit=1.0, lambda_reward=0.0, lambda_entropy=0.0, lambda_budget=0.0)
    single = scorer_objective(scorer, hidden, nll, seq, 3, params)
    x = nll.float().clamp_min(1e-6).log()
    halves = [slice(0, 6), slice(6, None)]
    total = 0.0
    for mine, other in (halves, halves[::-1]):
        o = x[other]
        norms = ScorerNorms(torch.tensor(float(len(nll))), torch.tensor(1.0), torch.tensor(3.0), 2,
                            lambda t, o=o: t + torch.stack([o.sum(), o.pow(2).sum()]))
        total += scorer_objective(scorer, hidden[mine], nll[mine], seq[mine], 3, params, norms=norms).fit.item()
    assert total == pytest.approx(single.fit.item(), rel=1e-6)


def test_fit_ranks_tokens_by_log_loss_where_the_reward_follows_outliers():
    """ℓ = exp(3·h₀ + small noise) plus a few huge-loss outliers along h₁: fitting the soft labels
    ranks fresh tokens by h₀ (i.e. by log ℓ); the reward term alone chases the outliers' direction."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(400, 6, generator=g)
    nll = torch.exp(3.0 * hidden[:, 0] - 6.0 + 0.1 * torch.randn(400, generator=g))
    out = torch.argsort(hidden[:, 1])[-4:]
    nll[out] = 50.0
    seq = torch.arange(400) % 20
    fresh = torch.randn(200, 6, generator=g)

    def spearman(scores):
        def rank(v):
            return torch.argsort(torch.argsort(v)).float()

        return torch.corrcoef(torch.stack([rank(scores), rank(fresh[:, 0])]))[0, 1].item()
    fit = LinearScorer(6)
    pretrain_scorer(fit, ATWUParams(**{**LOG_FIT, "pretrain_steps": 0}), hidden, nll, seq, 20, steps=200)
    reward = LinearScorer(6)
    pretrain_scorer(reward, ATWUParams(**{**NLL_TRACKING, "pretrain_steps": 0}), hidden, nll, seq, 20, steps=200)
    assert spearman(fit(fresh).detach()) > 0.95
    assert spearman(reward(fresh).detach()) < spearman(fit(fresh).detach()) - 0.1


@pytest.mark.parametrize("schedule", ["alternating", "joint"])
def test_logfit_fused_equals_unfused(tiny, schedule):
    params = dataclasses.replace(get_method("atwu_logfit").params(ATWUParams()), schedule=schedule, pretrain_steps=3)
    runs = []
    for fused in (True, False):
        unlearner = make(tiny, "atwu", params, fused_head=fused)
        result = unlearner.run()
        runs.append((unlearner.hooks.scorer.weight.detach().clone(), [h["loss"] for h in result.history]))
    assert runs[0][0].abs().sum() > 0
    assert torch.allclose(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------- score_mean_target


def test_rescale_to_mean_sets_the_batch_mean_and_keeps_the_ranking():
    g = torch.tensor([0.1, 0.3, 0.2, 0.6, 0.4], dtype=torch.float64)  # mean 0.32, max 0.6 <= 0.32 / 0.5
    out = rescale_to_mean(g, 0.5)
    assert out.mean().item() == pytest.approx(0.5, rel=1e-12)
    assert torch.allclose(out, g * 0.5 / 0.32, rtol=1e-12)  # one constant factor: ratios and ranking kept
    assert torch.equal(out.argsort(), g.argsort())
    assert torch.allclose(rescale_to_mean(g * 3 / 2, 0.5), out, rtol=1e-12)  # independent of the scorer's level


def test_rescale_to_mean_clips_at_one():
    g = torch.tensor([0.05, 0.05, 0.05, 0.9])  # mean 0.2625: c = 0.5 / 0.2625 sends 0.9 above 1
    out = rescale_to_mean(g, 0.5)
    assert out.max().item() == 1.0
    assert torch.allclose(out[:3], g[:3] * 0.5 / 0.2625)
    assert out.mean().item() < 0.5  # the clip can only lower the mean
    assert not out.requires_grad


def test_rescale_to_mean_uses_the_global_mean_with_all_reduce():
    g = torch.rand(11, generator=torch.Generator().manual_seed(3))
    a, b = g[:4], g[4:]
    ra = rescale_to_mean(a, 0.4, len(g), lambda t: t + b.sum())
    rb = rescale_to_mean(b, 0.4, len(g), lambda t: t + a.sum())
    assert torch.allclose(torch.cat([ra, rb]), rescale_to_mean(g, 0.4), atol=1e-7)
    assert mean_rescale_factor(a, 0.4, len(g), lambda t: t + b.sum()).item() == pytest.approx(0.4 / g.mean().item())


def test_score_mean_target_defaults_off_and_is_validated():
    assert ATWUParams().score_mean_target is None
    ATWUParams(score_mean_target=0.5).validate()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="score_mean_target"):
            ATWUParams(score_mean_target=bad).validate()


def test_score_sharpness_is_validated_and_needs_cached_scores():
    ATWUParams(score_from="target", score_sharpness=4.0).validate()
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="score_sharpness must be > 0"):
            ATWUParams(score_from="target", score_sharpness=bad).validate()
    with pytest.raises(ValueError, match="score_from target"):
        ATWUParams(score_sharpness=4.0).validate()


@pytest.mark.parametrize("fused", [True, False])
def test_score_mean_target_sets_the_model_step_scores(tiny, fused):
    """A frozen scorer at g ≡ 0.25 rescaled to mean 0.5 trains the model exactly like g ≡ 0.5, and
    unlike g ≡ 0.25 without the rescale; the logged score_mean is the scorer's raw g."""
    runs = {}
    for name, init, target in (("rescaled", 0.25, 0.5), ("half", 0.5, None), ("quarter", 0.25, None)):
        params = ATWUParams(schedule="frozen", init_score=init, score_mean_target=target)
        result = make(tiny, "atwu", params, fused_head=fused).run()
        runs[name] = result
    rescaled, half, quarter = runs["rescaled"], runs["half"], runs["quarter"]
    assert [h["loss"] for h in rescaled.history] == pytest.approx([h["loss"] for h in half.history], rel=1e-5)
    assert [h["loss"] for h in rescaled.history] != pytest.approx([h["loss"] for h in quarter.history], rel=1e-5)
    assert all(h["score_mean"] == pytest.approx(0.25) for h in rescaled.history)


@pytest.mark.parametrize("schedule", ["alternating", "joint"])
def test_score_mean_target_fused_equals_unfused(tiny, schedule):
    params = dataclasses.replace(get_method("atwu_logfit").params(ATWUParams()), schedule=schedule, pretrain_steps=3,
                                 score_mean_target=0.4)
    runs = []
    for fused in (True, False):
        unlearner = make(tiny, "atwu", params, fused_head=fused, steps=4)
        result = unlearner.run()
        runs.append((unlearner.hooks.scorer.weight.detach().clone(), [h["loss"] for h in result.history],
                     [p.detach().clone() for p in unlearner.model.parameters()]))
    assert runs[0][0].abs().sum() > 0
    assert torch.allclose(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-4, abs=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(runs[0][2], runs[1][2]))


def test_variants_name_the_settings_they_override():
    defaults = ATWUParams()
    mine = dataclasses.replace(defaults, update_every=3, scorer_lr=0.1)
    assert get_method("atwu_nll").ignored_settings(mine) == ["atwu.update_every=3 (runs with 1)"]  # scorer_lr is free
    assert get_method("atwu").ignored_settings(mine) == []
    assert get_method("atwu_nll").ignored_settings(dataclasses.replace(defaults, update_every=1)) == []  # same value
    assert get_method("grad_diff").ignored_settings(mine) == []


@pytest.mark.parametrize("packing", [False, True])
def test_pretraining_reads_the_target_in_micro_batches_like_one_full_batch(tiny, monkeypatch, packing):
    """The pre-training cache is built from micro-batch forwards (bounded activation memory on a
    real forget set); it must hold the same tokens, hidden rows, NLL and row ids as one forward of
    every row, with retain rows after the forget rows."""
    import atwu_fast.methods.atwu.hooks as trainer_mod
    from atwu_fast.model.tokens import forward_answer_tokens, token_nll

    seen = {}

    def capture(scorer, params, hidden, nll, seq, n_seqs, hidden_retain, steps):
        seen.update(hidden=hidden, nll=nll, seq=seq, n_seqs=n_seqs, hidden_retain=hidden_retain)
        return []

    forwards = []
    real_run_on = trainer_mod.run_on
    monkeypatch.setattr(trainer_mod, "pretrain_scorer", capture)
    monkeypatch.setattr(trainer_mod, "run_on", lambda model, fn: forwards.append(1) or real_run_on(model, fn))
    params = ATWUParams(pretrain_steps=1, pretrain_retain_rows=5, score_position="predictor")
    tok, enc, base = tiny
    cfg = TrainConfig(steps=3, forget_batch_size=3, retain_batch_size=2, lr=1e-2)  # several chunks
    unlearner = Unlearner(tiny_model(tok, base.state_dict()), get_method("atwu"), params, cfg, enc["forget"],
                          enc["retain"], tok.pad_token_id, packing=packing)
    rows = unlearner.forget + unlearner.retain[:5]
    assert len(forwards) == math.ceil(len(rows) / 3) > 1
    with torch.no_grad():
        unlearner.packing = False  # the reference: one padded forward of every row
        tokens, _ = forward_answer_tokens(unlearner.model.eval(), unlearner.batch(rows))
        nll = token_nll(unlearner.model, tokens)
    is_forget = tokens.seq < len(unlearner.forget)
    assert seen["n_seqs"] == len(unlearner.forget)
    assert torch.equal(seen["seq"], tokens.seq[is_forget])
    assert torch.allclose(seen["hidden"], tokens.hidden_pred[is_forget], atol=1e-5)
    assert torch.allclose(seen["nll"], nll[is_forget], atol=1e-5)
    assert torch.allclose(seen["hidden_retain"], tokens.hidden_pred[~is_forget], atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("labels", ["target", "model"])
def test_scorer_labels_target_reads_the_target_models_nll_of_the_batch_rows(tiny, monkeypatch, fused, labels):
    """With ``scorer_labels`` 'target' every scorer step reads the NLL the model had before unlearning,
    for the micro-batch's own forget rows in token order, while the model moves; 'model' (the
    default) reads the moving model's, which differs after the first model step."""
    import atwu_fast.methods.atwu.hooks as hooks_mod
    from atwu_fast.model.tokens import forward_answer_tokens, token_nll

    seen = []
    real_step = hooks_mod.ScorerTrainer.step

    def capture(self, hidden, nll, seq, n_seqs, *args, **kwargs):
        seen.append((list(unlearner.forget_indices), nll.clone()))
        return real_step(self, hidden, nll, seq, n_seqs, *args, **kwargs)

    monkeypatch.setattr(hooks_mod.ScorerTrainer, "step", capture)
    params = ATWUParams(**{**LOG_FIT, "pretrain_steps": 0}, scorer_labels=labels)
    unlearner = make(tiny, "atwu", params, steps=4, fused_head=fused, lr=5e-2)
    target = tiny_model(tiny[0], tiny[2].state_dict()).eval()
    unlearner.run()
    assert len(seen) == 4
    moved = []
    for indices, nll in seen:
        with torch.no_grad():
            tokens, _ = forward_answer_tokens(target, unlearner.batch([unlearner.forget[i] for i in indices]))
            expected = token_nll(target, tokens)
        assert nll.shape == expected.shape
        moved.append((nll - expected).abs().max().item())
    if labels == "target":
        assert max(moved) < 1e-4  # fp32 forwards of the same rows
    else:
        assert moved[0] < 1e-4 and max(moved[1:]) > 1e-2  # the model has stepped at lr 5e-2


@pytest.mark.parametrize("sharpness", [1.0, 4.0])
def test_score_from_target_uses_the_pretrained_scorers_scores_of_the_target_throughout(tiny, sharpness):
    """With ``score_from`` 'target' the model step's scores are the pre-trained scorer's on the target
    model's hidden states, cached per forget token: the scorer does not move, every step's scores
    and the evaluated weights are those cached values, while the model does move."""
    from atwu_fast.model.tokens import forward_answer_tokens

    params = ATWUParams(**LOG_FIT, score_from="target", score_sharpness=sharpness)
    unlearner = make(tiny, "atwu", params, steps=3, lr=5e-2, fused_head=False)  # the fused head: test below
    hooks = unlearner.hooks
    assert len(hooks.pretrain_losses) == LOG_FIT["pretrain_steps"] and hooks.scorer.weight.abs().sum() > 0
    w = hooks.scorer.weight.clone()
    target = tiny_model(tiny[0], tiny[2].state_dict()).eval()
    rows = unlearner.forget
    with torch.no_grad():
        tokens, _ = forward_answer_tokens(target, unlearner.batch(rows))
        expected = torch.sigmoid(sharpness * hooks.scorer.logits(tokens.hidden("predictor")))
    seen = []
    real = hooks.scorer_pass

    def capture(loop, step, hidden_f, q, stats, hidden_r=None):
        out = real(loop, step, hidden_f, q, stats, hidden_r)
        seen.append((list(loop.forget_indices), q.forget_weights.clone()))
        return out

    hooks.scorer_pass = capture
    unlearner.run()
    assert torch.equal(hooks.scorer.weight, w)
    assert len(seen) == 3
    for indices, weights in seen:
        want = torch.cat([expected[tokens.seq == i] for i in indices])
        assert torch.allclose(weights, want, atol=1e-5)
    with torch.no_grad():
        moved, _ = forward_answer_tokens(unlearner.model.eval(), unlearner.batch(rows))
        now = torch.sigmoid(sharpness * hooks.scorer.logits(moved.hidden("predictor")))
        assert not torch.allclose(now, expected, atol=1e-3)  # the model moved
        assert torch.allclose(hooks.token_weights(moved, rows), expected, atol=1e-5)  # evaluated: the cached scores


@pytest.mark.parametrize("mean_target", [None, 0.5])
def test_score_from_target_fused_equals_unfused(tiny, mean_target):
    params = ATWUParams(**LOG_FIT, score_from="target", score_mean_target=mean_target)
    runs = []
    for fused in (True, False):
        unlearner = make(tiny, "atwu", params, fused_head=fused, lr=5e-2)
        result = unlearner.run()
        runs.append(([h["loss"] for h in result.history], [h["score_mean"] for h in result.history],
                     [p.detach().clone() for p in unlearner.model.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-4, abs=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(runs[0][2], runs[1][2]))
