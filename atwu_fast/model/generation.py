"""Batched greedy generation from left-padded prompts (the one generation loop)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.collate import collate
from .distributed import SINGLE, DistContext, generation_kwargs, map_batches
from .tokens import model_device


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                    stop_ids: list[int], decode: Callable[[list[int]], str], starts=None,
                    ctx: DistContext = SINGLE) -> list[str]:
    """Greedy continuations of prompt ids, cut at the first of ``stop_ids`` and turned into text by
    ``decode``; batched (sharded over the ranks of a distributed ``ctx``, results in prompt order)."""
    stops = set(stop_ids)

    def batch_texts(m, part: list[list[int]]) -> list[str]:
        batch = collate([{"input_ids": p} for p in part], pad_id=tokenizer.pad_token_id, side="left")
        batch = {k: v.to(model_device(m)) for k, v in batch.items()}
        out = m.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=list(stop_ids) or None,
                         **generation_kwargs(model, ctx))
        texts = []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            ids = []
            for i in row:
                if i in stops:
                    break
                ids.append(i)
            texts.append(decode(ids))
        return texts

    return map_batches(model, prompts, batch_size, batch_texts, starts, ctx=ctx)
