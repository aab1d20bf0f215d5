"""Supervised fine-tuning on QA answers (loss on answer tokens only): the models a protocol starts from.

One step = ``grad_accum`` micro-batches of ``batch_size`` rows. The loss of a step is the mean NLL
over every answer token of its micro-batches: each micro-batch adds Σℓ / N with N the step's total
answer-token count (known from the rows before the forward), so the gradient equals one batch of
``batch_size × grad_accum`` rows; with one micro-batch this is exactly the token mean. The step is
then clipped (total norm 1) and taken; the learning rate warms up linearly, then stays or decays.

Training stops after its steps (``epochs`` passes over the rows, else ``max_steps``) or once the
running mean NLL (0.9·previous + 0.1·this step) falls below ``target_loss`` after ``min_steps``.
With a checkpoint directory the loop writes crash-safe checkpoints (weights, optimiser, schedule,
batch order, running mean, history) every ``checkpoint_every`` steps and ``resume`` continues from
the latest, to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch

from ..config import check, option
from ..data.labels import answer_label_count
from ..model.tokens import forward_answer_tokens, make_batch, model_device, token_nll
from ..train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ..train.optim import build_optimizer
from ..train.sampling import EpochSampler
from ..train.schedule import warmup_lambda

# Fields added after the embedded benchmark's models were first cached, at the values that train
# exactly as before: left out of cache keys while they have them (see FinetuneConfig.cache_identity).
NEUTRAL = {"epochs": 0.0, "grad_accum": 1, "lr_schedule": "constant", "group_by_length": 0}


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning: AdamW on the answer tokens' NLL."""

    lr: float = option("AdamW learning rate", 3e-3)
    batch_size: int = option("QA pairs per micro-batch", 32)
    max_steps: int = option("upper bound on optimiser steps (when epochs is 0)", 1200)
    min_steps: int = option("steps before early stopping may trigger", 200)
    target_loss: float = option("stop once the running mean answer NLL is below this (0: never)", 0.02)
    warmup_steps: int = option("linear warm-up steps", 20)
    weight_decay: float = option("AdamW weight decay", 0.0)
    epochs: float = option("passes over the rows (0: max_steps steps)", 0.0)
    grad_accum: int = option("micro-batches per optimiser step", 1)
    lr_schedule: Literal["constant", "linear"] = option("after warm-up: constant or linear decay to 0", "constant")
    group_by_length: int = option("batch rows of similar length: sort chunks of K batches by length (0: plain "
                                  "shuffle; see train.sampling.EpochSampler)", 0)

    def validate(self) -> None:
        check(self.lr > 0 and self.batch_size >= 1 and self.max_steps >= 1,
              "fine-tuning lr, batch_size and max_steps must be positive")
        check(self.epochs >= 0 and self.grad_accum >= 1 and self.group_by_length >= 0 and self.min_steps >= 0,
              "fine-tuning epochs, min_steps and group_by_length must be >= 0 and grad_accum >= 1")
        check(self.warmup_steps >= 0 and self.weight_decay >= 0 and self.target_loss >= 0,
              "fine-tuning warmup_steps, weight_decay and target_loss must be >= 0")

    def steps(self, n_rows: int) -> int:
        """Optimiser steps over ``n_rows`` rows: ``epochs`` passes (rounded up), else ``max_steps``."""
        if not self.epochs:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_rows / (self.batch_size * self.grad_accum)))

    def cache_identity(self) -> dict:
        """What a fine-tuned model depends on, for cache keys: every field, except the fields of
        :data:`NEUTRAL` while they hold their neutral values, so that models cached before those
        options existed keep their keys (they were trained exactly so)."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if k not in NEUTRAL or v != NEUTRAL[k]}


class FineTuner:
    """Fine-tunes ``model`` on ``encoded`` rows (``input_ids``/``labels``) with ``cfg``; ``seed`` sets
    the batch order. ``optim``: the model optimiser (``train.optim``); ``packing``: padding-free
    micro-batches (``model.tokens.make_batch``)."""

    def __init__(self, model, encoded: list[dict], cfg: FinetuneConfig, pad_id: int, seed: int,
                 optim: str = "adamw", packing: bool = False):
        self.model, self.encoded, self.cfg, self.pad_id, self.packing = model, encoded, cfg, pad_id, packing
        self.seed = seed
        self.total_steps = cfg.steps(len(encoded))
        lengths = [len(r["input_ids"]) for r in encoded]
        self.batches = EpochSampler(len(encoded), cfg.batch_size, seed, lengths=lengths, group=cfg.group_by_length)
        self.optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], optim, lr=cfg.lr,
                                         weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_lambda(cfg.warmup_steps, self.total_steps, cfg.lr_schedule))
        self.running = math.inf
        self.history: list[float] = []  # the loss of every step

    def state_dict(self, step: int) -> dict:
        return {"step": step, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "batches": self.batches.state_dict(), "running": self.running, "history": list(self.history),
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> int:
        """Restore everything but the weights; returns the steps already done."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.batches.load_state_dict(state["batches"])
        self.running, self.history = float(state["running"]), list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"])

    def train_step(self) -> float:
        """One optimiser step; returns its loss (the mean NLL of its answer tokens)."""
        parts = [[self.encoded[i] for i in next(self.batches)] for _ in range(self.cfg.grad_accum)]
        total = sum(answer_label_count(r["labels"]) for rows in parts for r in rows)
        device = model_device(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        value = 0.0
        for rows in parts:
            tokens, _ = forward_answer_tokens(self.model, make_batch(rows, self.pad_id, device, self.packing))
            loss = token_nll(self.model, tokens).sum() / max(total, 1)
            loss.backward()
            value += loss.item()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        self.schedule.step()
        return value

    def run(self, log: Optional[Callable[[str], None]] = None, checkpoint_dir: Optional[Path] = None,
            checkpoint_every: int = 0, resume: bool = False) -> dict:
        """Train until the last step or early stopping (see the module docstring); returns a summary
        (steps, final running NLL)."""
        torch.manual_seed(self.seed)  # dropout, where a model has it
        step = 0
        found = latest_checkpoint(checkpoint_dir) if resume and checkpoint_dir is not None else None
        if found is not None:
            step = self.load_state_dict(load_checkpoint(found, self.model))
            if log:
                log(f"  resumed from {found} (step {step})")
        self.model.train()
        while not self.done(step):
            value = self.train_step()
            step += 1
            self.history.append(value)
            self.running = value if math.isinf(self.running) else 0.9 * self.running + 0.1 * value
            if log and step % 100 == 0:
                log(f"  step {step:5d}  answer NLL {self.running:.4f}")
            if checkpoint_dir is not None and checkpoint_every and step % checkpoint_every == 0 and not self.done(step):
                save_checkpoint(checkpoint_dir, step, self.model, self.state_dict(step))
        self.model.eval()
        return {"steps": step, "final_nll": self.running}

    def done(self, step: int) -> bool:
        cfg = self.cfg
        early = cfg.target_loss > 0 and step >= cfg.min_steps and self.running < cfg.target_loss
        return early or step >= self.total_steps


def finetune(model, encoded: list[dict], cfg: FinetuneConfig, pad_id: int, seed: int,
             log: Optional[Callable[[str], None]] = None) -> dict:
    """Train ``model`` to memorise the answers of ``encoded`` rows (see the module docstring); returns a
    small training summary."""
    return FineTuner(model, encoded, cfg, pad_id, seed).run(log)
