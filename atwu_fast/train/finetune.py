"""Supervised fine-tuning on QA answers (loss on answer tokens only): the target and retain models of a protocol."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import check, option
from ..data.collate import collate
from ..model.tokens import answer_tokens, last_hidden, token_nll
from .sampling import EpochSampler
from .schedule import warmup_lambda


@dataclass
class FinetuneConfig:
    """Fine-tuning the target (forget+retain+general) and retain (retain+general) models."""

    lr: float = option("AdamW learning rate", 3e-3)
    batch_size: int = option("QA pairs per step", 32)
    max_steps: int = option("upper bound on steps", 1200)
    min_steps: int = option("steps before early stopping may trigger", 200)
    target_loss: float = option("stop once the running mean answer NLL is below this", 0.02)
    warmup_steps: int = option("linear warm-up steps", 20)
    weight_decay: float = option("AdamW weight decay", 0.0)

    def validate(self) -> None:
        check(self.lr > 0 and self.batch_size >= 1 and self.max_steps >= 1, "pretrain: lr, batch_size, max_steps must be positive")


def finetune(model, encoded: list[dict], cfg: FinetuneConfig, pad_id: int, seed: int,
             log: Optional[Callable[[str], None]] = None) -> dict:
    """Train ``model`` to memorise the answers of ``encoded`` rows (loss on answer tokens only).

    Stops after ``cfg.max_steps`` or once the running mean NLL falls below ``cfg.target_loss``
    (not before ``cfg.min_steps``). Returns a small training summary.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(cfg.warmup_steps, cfg.max_steps))
    model.train()
    running = math.inf
    step = 0
    for step, rows in enumerate(EpochSampler(len(encoded), cfg.batch_size, seed), start=1):
        batch = collate([encoded[i] for i in rows], pad_id=pad_id)
        hidden = last_hidden(model, batch["input_ids"], batch["attention_mask"])
        loss = token_nll(model, answer_tokens(hidden, batch["labels"])).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = loss.item()
        running = value if math.isinf(running) else 0.9 * running + 0.1 * value
        if log and step % 100 == 0:
            log(f"  step {step:5d}  answer NLL {running:.4f}")
        if (step >= cfg.min_steps and running < cfg.target_loss) or step >= cfg.max_steps:
            break
    model.eval()
    return {"steps": step, "final_nll": running}
