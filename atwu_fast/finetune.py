"""Supervised fine-tuning of the tiny models on QA answers (the target and the retain model)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch

from .config import FinetuneConfig
from .data import collate
from .model import answer_tokens, last_hidden, token_nll
from .sampling import EpochSampler


def warmup_lambda(warmup_steps: int, total_steps: int, schedule: str = "constant") -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "linear":
            return max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))
        return 1.0

    return factor


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
