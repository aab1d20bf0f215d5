"""Checkpoints: exact resume, divergence guard, crash-safe writes."""

import pytest
import torch

from atwu_fast import checkpoint as ckpt
from atwu_fast.config import ATWUParams, ExperimentConfig, ModelConfig, SyntheticConfig, TrainConfig
from atwu_fast.data import encode_qa, generate, tokenizer_corpus, train_tokenizer
from atwu_fast.methods import get_method
from atwu_fast.model import build_tiny_llama
from atwu_fast.trainer import DivergenceError, Unlearner

TINY_MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tiny():
    splits = generate(SyntheticConfig(n_forget_authors=3, n_retain_authors=4, n_holdout_authors=0, n_general=4))
    tok = train_tokenizer(tokenizer_corpus(splits), 400)
    enc = {k: [encode_qa(tok, r["question"], r["answer"], 64, r.get("spans")) for r in v] for k, v in splits.items()}
    return tok, enc, build_tiny_llama(TINY_MODEL, tok, 80).state_dict()


def unlearner(tiny, method="atwu", **train):
    tok, enc, state = tiny
    model = build_tiny_llama(TINY_MODEL, tok, 80)
    model.load_state_dict(state)
    reference = None
    if get_method(method).needs_reference:
        reference = build_tiny_llama(TINY_MODEL, tok, 80)
        reference.load_state_dict(state)
    params = ATWUParams(update_every=2) if method.startswith("atwu") else getattr(
        ExperimentConfig(), get_method(method).params_section)
    cfg = TrainConfig(**{"steps": 6, "forget_batch_size": 3, "retain_batch_size": 3, "lr": 1e-2,
                         "warmup_steps": 2, "lr_schedule": "linear", **train})
    return Unlearner(model, get_method(method), params, cfg, enc["forget"], enc["retain"], tok.pad_token_id,
                     reference=reference)


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["atwu", "npo", "wga"])
def test_resume_after_crash_reproduces_uninterrupted_run(tiny, tmp_path, method):
    full = unlearner(tiny, method, checkpoint_every=2)
    reference = full.run(eval_every=3, on_eval=lambda s: {"step": s}, checkpoint_dir=tmp_path / "a")

    crashing = unlearner(tiny, method, checkpoint_every=2)

    def crash(stats):
        if stats["step"] == 5:
            raise Crash()

    with pytest.raises(Crash):
        crashing.run(eval_every=3, on_eval=lambda s: {"step": s}, on_step=crash, checkpoint_dir=tmp_path / "b")
    assert ckpt.latest_checkpoint(tmp_path / "b").name == "step-0000004"

    resumed = unlearner(tiny, method, checkpoint_every=2)
    result = resumed.run(eval_every=3, on_eval=lambda s: {"step": s}, checkpoint_dir=tmp_path / "b", resume=True)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    if full.scorer is not None:
        assert torch.equal(full.scorer.weight, resumed.scorer.weight)
        assert full.scorer.weight.abs().sum() > 0
    assert [h["loss"] for h in result.history] == [h["loss"] for h in reference.history]
    assert result.evaluations == [{"step": 3}, {"step": 6}]


def test_divergence_names_step_and_batch_and_keeps_last_good_checkpoint(tiny, tmp_path):
    run = unlearner(tiny, "grad_diff", checkpoint_every=2)

    def poison(stats):
        if stats["step"] == 3:  # corrupt the weights after step 3: step 4's loss is NaN
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))

    with pytest.raises(DivergenceError, match=r"non-finite loss .* at step 4; batch: forget rows \[.*\], retain rows"):
        run.run(on_step=poison, checkpoint_dir=tmp_path)
    good = ckpt.latest_checkpoint(tmp_path)
    assert good.name == "step-0000002"
    model = build_tiny_llama(TINY_MODEL, tiny[0], 80)
    state = ckpt.load_checkpoint(good, model)
    assert state["step"] == 2 and len(state["history"]) == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradient_norm_guard(tiny):
    run = unlearner(tiny, "grad_diff", abort_grad_norm=1e-9)
    with pytest.raises(DivergenceError, match="above train.abort_grad_norm"):
        run.run()


def test_crash_while_writing_leaves_previous_checkpoint(tiny, tmp_path, monkeypatch):
    run = unlearner(tiny, "grad_diff", steps=2, checkpoint_every=1)
    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        if "step-0000002" in str(path) or ".step-0000002" in str(path):
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        run.run(checkpoint_dir=tmp_path)
    good = ckpt.latest_checkpoint(tmp_path)
    assert good.name == "step-0000001"
    assert not any(p.name.startswith(".step-0000002") for p in tmp_path.iterdir())  # no partial directory
    assert ckpt.load_checkpoint(good, build_tiny_llama(TINY_MODEL, tiny[0], 80))["step"] == 1
