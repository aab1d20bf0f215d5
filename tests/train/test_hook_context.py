"""Hooks see the training loop through HookContext only: what a method may read and call, not the
trainer's internals."""

import dataclasses

import pytest
import torch
from tiny_unlearning import tiny_data, tiny_model

from atwu_fast.methods import get_method
from atwu_fast.methods.base import HookContext, TrainingHooks
from atwu_fast.methods.gradient_ascent import GradDiffParams
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.trainer import Unlearner


class Probe(TrainingHooks):
    def __init__(self):
        self.seen = []

    def setup(self, loop):
        self.seen.append(("setup", loop))
        return []

    def before_loss(self, loop, step, tokens, is_forget, q, stats):
        self.seen.append(("before_loss", loop))
        assert loop.model is not None and loop.cfg.forget_batch_size == 2
        assert len(loop.forget_indices) == 2 and all(0 <= i < len(loop.forget) for i in loop.forget_indices)
        with pytest.raises(AttributeError):
            loop.optimizer  # noqa: B018 - the trainer's internals are not part of the interface
        return torch.zeros(())

    def before_model_step(self, loop):
        self.seen.append(("before_model_step", loop))


def test_every_hook_gets_the_context_not_the_trainer():
    tok, enc = tiny_data()
    probe = Probe()
    method = dataclasses.replace(get_method("grad_diff"), hooks=lambda params: probe)
    loop = Unlearner(tiny_model(tok), method, GradDiffParams(), TrainConfig(steps=2, forget_batch_size=2,
                     retain_batch_size=2), enc["forget"], enc["retain"], tok.pad_token_id)
    loop.run()
    kinds = [kind for kind, _ in probe.seen]
    assert kinds[0] == "setup" and kinds.count("before_loss") == 2 and kinds.count("before_model_step") == 2
    assert all(type(ctx) is HookContext for _, ctx in probe.seen)
    assert all(ctx.model is loop.model for _, ctx in probe.seen)
