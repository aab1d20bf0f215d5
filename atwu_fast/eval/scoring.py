"""Model-side quantities for the real-benchmark evaluations, batched and without N×V logits.

Per-token NLL goes through the chunked LM-head op (``atwu_kernels.linear_token_nll``) on the
answer tokens only. Argmax predictions (extraction strength, exact memorisation) and the
log-prob moments μ_t, σ_t that Min-K%++ needs are computed chunk by chunk over those tokens
(``chunk × V`` at a time). Generation is batched greedy decoding of left-padded prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import collate
from ..distributed import generation_kwargs, map_batches
from ..model import answer_tokens, last_hidden, lm_head, token_nll


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class RowTokens:
    """Per-row answer-token quantities (answer order; the last token is eos / end-of-turn)."""

    nll: list[np.ndarray]
    labels: list[np.ndarray]
    argmax: list[np.ndarray] | None = None
    mu: list[np.ndarray] | None = None
    sigma: list[np.ndarray] | None = None

    def mean_nll(self) -> np.ndarray:
        return np.array([r.mean() if r.size else np.nan for r in self.nll])


def _split(values: torch.Tensor, seq: torch.Tensor, n: int) -> list[np.ndarray]:
    values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.cpu().numpy()
    seq = seq.cpu().numpy()
    return [values[seq == i] for i in range(n)]


@torch.no_grad()
def row_tokens(model, rows: list[dict], pad_id: int, batch_size: int, argmax: bool = False,
               moments: bool = False, chunk_size: int = 1024) -> RowTokens:
    """Teacher-forced answer-token NLL (and optionally argmax ids, μ_t, σ_t) of encoded rows."""
    def batch_rows(m, part: list[dict]) -> list[dict]:
        weight, bias = lm_head(m)
        batch = _to(collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in part], pad_id),
                    model_device(m))
        tokens = answer_tokens(last_hidden(m, batch["input_ids"], batch["attention_mask"]), batch["labels"])
        n = len(part)
        cols = {"nll": _split(token_nll(m, tokens, chunk_size), tokens.seq, n),
                "labels": _split(tokens.targets, tokens.seq, n)}
        if argmax or moments:
            preds, mus, sigmas = [], [], []
            for lo in range(0, tokens.targets.numel(), chunk_size):
                logits = tokens.hidden_pred[lo:lo + chunk_size] @ weight.T
                if bias is not None:
                    logits = logits + bias
                logits = logits.float()
                if argmax:
                    preds.append(logits.argmax(-1))
                if moments:
                    lp = torch.log_softmax(logits, dim=-1)
                    p = lp.exp()
                    mu = (p * lp).sum(-1)
                    var = (p * lp * lp).sum(-1) - mu * mu
                    mus.append(mu)
                    sigmas.append(var.clamp_min(0).sqrt())
            empty = tokens.targets.new_zeros(0)
            if argmax:
                cols["argmax"] = _split(torch.cat(preds) if preds else empty, tokens.seq, n)
            if moments:
                cols["mu"] = _split(torch.cat(mus) if mus else empty.float(), tokens.seq, n)
                cols["sigma"] = _split(torch.cat(sigmas) if sigmas else empty.float(), tokens.seq, n)
        return [{k: v[i] for k, v in cols.items()} for i in range(n)]

    per_row = map_batches(model, rows, batch_size, batch_rows)
    column = lambda key: [r[key] for r in per_row]  # noqa: E731
    return RowTokens(column("nll"), column("labels"), column("argmax") if argmax else None,
                     column("mu") if moments else None, column("sigma") if moments else None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
             stop_ids: list[int], stop_strings: tuple[str, ...] = ()) -> list[str]:
    """Greedy continuations of left-padded prompts, cut at the first stop id / stop string, stripped."""
    stops = set(stop_ids)

    def batch_texts(m, part: list[list[int]]) -> list[str]:
        batch = _to(collate([{"input_ids": p} for p in part], pad_id=tokenizer.pad_token_id, side="left"),
                    model_device(m))
        out = m.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=list(stop_ids) or None,
                         **generation_kwargs(model))
        texts = []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            ids = []
            for i in row:
                if i in stops:
                    break
                ids.append(i)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            for s in stop_strings:
                if s and s in text:
                    text = text.split(s)[0]
            texts.append(text.strip())
        return texts

    return map_batches(model, prompts, batch_size, batch_texts)
