"""The unlearning loop: one forward per micro-batch, scorer schedules, determinism."""


import pytest
import torch
from tiny_unlearning import tiny_data, tiny_model

from atwu_fast.methods import get_method
from atwu_fast.methods.atwu.params import ATWUParams
from atwu_fast.model.tokens import decoder
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.trainer import Unlearner


@pytest.fixture(scope="module")
def tiny():
    tok, enc = tiny_data()
    return tok, enc, tiny_model(tok)


def make(tiny, method="atwu", params=None, packing=False, **train):
    tok, enc, base = tiny
    copy = tiny_model(tok, base.state_dict())
    cfg = TrainConfig(**{"steps": 4, "forget_batch_size": 4, "retain_batch_size": 4, "lr": 1e-2, **train})
    params = params or ATWUParams()
    reference = None
    if get_method(method).needs_reference:
        reference = tiny_model(tok, base.state_dict())
    return Unlearner(copy, get_method(method), params, cfg, enc["forget"], enc["retain"], tok.pad_token_id,
                     reference=reference, packing=packing)


def test_one_decoder_forward_per_micro_batch(tiny):
    unlearner = make(tiny, steps=3, grad_accum=2)
    calls = []
    decoder(unlearner.model).register_forward_hook(lambda *a: calls.append(1))
    unlearner.run()
    assert len(calls) == 3 * 2


def test_frozen_scorer_never_changes(tiny):
    unlearner = make(tiny, method="atwu_frozen", steps=4)
    before = {k: v.clone() for k, v in unlearner.hooks.scorer.state_dict().items()}
    result = unlearner.run()
    assert all(torch.equal(before[k], v) for k, v in unlearner.hooks.scorer.state_dict().items())
    assert all(h["score_mean"] == pytest.approx(0.5) for h in result.history)


def test_alternating_scorer_updates_every_n_steps(tiny):
    unlearner = make(tiny, params=ATWUParams(update_every=2), steps=5)
    snapshots = []
    original = unlearner.hooks.trainer.step

    def step(*args):
        snapshots.append(len(unlearner_history))
        return original(*args)

    unlearner_history = []
    unlearner.hooks.trainer.step = step
    result = unlearner.run(eval_every=1, on_eval=lambda s: unlearner_history.append(s))
    assert snapshots == [0, 2, 4]  # steps 1, 3, 5 (0-based 0, 2, 4)
    assert "scorer_loss" in result.history[0] and "scorer_loss" not in result.history[1]
    assert not torch.all(unlearner.hooks.scorer.weight == 0)


@pytest.mark.parametrize("method", ["atwu", "atwu_oracle", "grad_diff", "npo", "simnpo", "wga", "satimp", "grad_ascent"])
def test_every_method_trains_and_is_deterministic(tiny, method):
    a = make(tiny, method=method, params=None if method.startswith("atwu") else _params(method))
    b = make(tiny, method=method, params=None if method.startswith("atwu") else _params(method))
    ha, hb = a.run().history, b.run().history
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(tiny[2].parameters(), a.model.parameters()))


def test_gradient_ascent_raises_forget_nll(tiny):
    from atwu_fast.data.collate import collate
    from atwu_fast.model.tokens import answer_tokens, last_hidden, token_nll

    tok, enc, base = tiny

    def forget_nll(model):
        batch = collate(enc["forget"], tok.pad_token_id)
        with torch.no_grad():
            tokens = answer_tokens(last_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])
            return token_nll(model, tokens).mean().item()

    unlearner = make(tiny, method="grad_ascent", params=_params("grad_ascent"), steps=3)
    unlearner.run()
    assert forget_nll(unlearner.model) > forget_nll(base) + 0.1


def _params(method):
    from atwu_fast.unlearn.experiment import ExperimentConfig

    return getattr(ExperimentConfig(), get_method(method).params_section)


@pytest.mark.parametrize("schedule", ["alternating", "joint", "frozen"])
@pytest.mark.parametrize("position", ["token", "predictor"])
def test_fused_head_path_equals_unfused_path(tiny, schedule, position):
    params = ATWUParams(schedule=schedule, score_position=position, update_every=2, lambda_l2=0.1)
    fused = make(tiny, params=params, steps=4, fused_head=True)
    plain = make(tiny, params=params, steps=4, fused_head=False)
    hf, hp = fused.run().history, plain.run().history
    for a, b in zip(hf, hp):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    for pa, pb in zip(fused.model.parameters(), plain.model.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6)
    assert torch.allclose(fused.hooks.scorer.weight, plain.hooks.scorer.weight, rtol=1e-4, atol=1e-7)
    if schedule != "frozen":
        assert fused.hooks.scorer.weight.abs().sum() > 0


@pytest.mark.parametrize("method, params", [
    ("atwu", ATWUParams(update_every=2, pretrain_steps=3)), ("npo", None), ("wga", None), ("atwu_oracle", None)])
def test_packed_batches_train_like_padded_ones(tiny, method, params):
    """Padding-free packing changes only the layout: same losses, scorer and weights."""
    params = params or _params(method)
    # lr 1e-3: Adam turns fp32 round-off in near-zero gradients into ±lr steps, so a large lr would
    # compare round-off, not semantics
    packed = make(tiny, method, params, packing=True, steps=4, lr=1e-3)
    padded = make(tiny, method, params, packing=False, steps=4, lr=1e-3)
    calls = []
    decoder(packed.model).register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                                with_kwargs=True)
    hk, hd = packed.run().history, padded.run().history
    assert calls and all(shape[0] == 1 for shape in calls)  # one packed row per micro-batch
    # Tolerances. Both runs start from the same fp32 weights and see the same tokens; only the order of
    # the fp32 reductions differs (one packed row vs padded rows). A sum of N fp32 terms taken in another
    # order moves by ≤ N·2⁻²⁴ of the terms' magnitudes.
    # Loss: token means over ≤ 4 rows × ~30 answer tokens → ≤ 120·2⁻²⁴ ≈ 7e-6 relative: rel 1e-5 (the
    # losses here are ≥ 5, no absolute floor needed).
    for a, b in zip(hk, hd):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # Weights: AdamW's step lr·m̂/(√v̂ + ε) is homogeneous of degree 0 in the gradients, so a relative
    # gradient error ρ changes a step by ≤ ~2ρ·lr. With ρ = 1e-3 (reductions over ≤ 10³ terms, 10³·2⁻²⁴ ≈ 6e-5,
    # times 16 for cancellation): 4 steps × 2·1e-3 × lr 1e-3 = 8e-6 absolute, plus one fp32 rounding of
    # p + Δ per step (4 ulp ≤ 5e-7·|p|). A layout bug (tokens attending across rows, wrong positions) changes
    # gradients by O(1) and the weights by O(lr) = 1e-3 per step, 100× above this (measured: ≤ 6e-7 here;
    # continuous position ids across the packed rows: 8e-3).
    for pa, pb in zip(packed.model.parameters(), padded.model.parameters()):
        assert torch.allclose(pa, pb, rtol=5e-7, atol=8e-6)
    assert any(not torch.equal(pa, pb) for pa, pb in zip(packed.model.parameters(), tiny[2].parameters()))
    if packed.method.learns_weights:
        # Scorer: momentum SGD is linear in its ≤ 5 gradients (3 pre-training updates + steps 0 and 2), each
        # an fp32 mean over ≤ 19 rows × ~25 tokens (≤ 500·2⁻²⁴ ≈ 3e-5 relative): the two scorers agree to
        # ~3e-5 of the scorer's scale; 1e-4 of max |w| leaves ×3 for updates that partly cancel. A wrong
        # hidden row for a packed token changes w by O(|w|) (measured: 7e-8 of max |w| here; 0.48 with broken
    # row boundaries).
        wk, wd = packed.hooks.scorer.weight.detach(), padded.hooks.scorer.weight.detach()
        assert wd.abs().max() > 0
        assert (wk - wd).abs().max() <= 1e-4 * wd.abs().max()
