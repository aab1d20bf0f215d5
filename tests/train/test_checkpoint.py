"""Checkpoints: exact resume, divergence guard, crash-safe writes."""

import pytest
import torch
from tiny_unlearning import tiny_data, tiny_model

from atwu_fast.methods import get_method
from atwu_fast.methods.atwu.params import ATWUParams
from atwu_fast.train import checkpoint as ckpt
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.trainer import DivergenceError, Unlearner
from atwu_fast.unlearn.experiment import ExperimentConfig


@pytest.fixture(scope="module")
def tiny():
    tok, enc = tiny_data()
    return tok, enc, tiny_model(tok).state_dict()


def unlearner(tiny, method="atwu", **train):
    tok, enc, state = tiny
    model = tiny_model(tok, state)
    reference = None
    if get_method(method).needs_reference:
        reference = tiny_model(tok, state)
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
    if full.method.learns_weights:
        assert torch.equal(full.hooks.scorer.weight, resumed.hooks.scorer.weight)
        assert full.hooks.scorer.weight.abs().sum() > 0
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
    model = tiny_model(tiny[0])
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
    assert ckpt.load_checkpoint(good, tiny_model(tiny[0]))["step"] == 1
