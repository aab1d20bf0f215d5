"""Model-side quantities for the real-benchmark evaluations, batched and without N×V logits.

Per-token NLL goes through the chunked LM-head op (``atwu_kernels.linear_token_nll``) on the
answer tokens only. Argmax predictions (extraction strength, exact memorisation) and the
log-prob moments μ_t, σ_t that Min-K%++ needs are computed chunk by chunk over those tokens
(``chunk × V`` at a time; the moments in float64, :func:`logprob_moments`). Generation is batched
greedy decoding of left-padded prompts.
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
    """Per-row pieces of a flat token tensor; floats as float32, float64 kept as float64."""
    if values.is_floating_point() and values.dtype != torch.float64:
        values = values.float()
    values = values.detach().cpu().numpy()
    seq = seq.cpu().numpy()
    return [values[seq == i] for i in range(n)]


def logprob_moments(logits: torch.Tensor, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """μ_t = Σ_v p_v log p_v and σ_t = sqrt(max(Σ_v p_v (log p_v)² − μ_t², 0)) of [T, V] logits, in float64.

    Min-K%++'s moments, RWKU's and open-unlearning's one-pass formula; float32 would leave ~1e-6 errors
    (the variance cancels). ``rows`` logit rows at a time bound the float64 copies to rows × V.
    """
    mus, sigmas = [], []
    for lo in range(0, logits.shape[0], rows):
        lp = torch.log_softmax(logits[lo:lo + rows].double(), dim=-1)
        p = lp.exp()
        mu = (p * lp).sum(-1)
        mus.append(mu)
        sigmas.append(((p * lp * lp).sum(-1) - mu * mu).clamp_min(0).sqrt())
    empty = logits.new_zeros(0, dtype=torch.float64)
    return (torch.cat(mus), torch.cat(sigmas)) if mus else (empty, empty)


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
                if argmax:
                    preds.append(logits.float().argmax(-1))
                if moments:
                    mu, sigma = logprob_moments(logits)
                    mus.append(mu)
                    sigmas.append(sigma)
            empty = tokens.targets.new_zeros(0)
            if argmax:
                cols["argmax"] = _split(torch.cat(preds) if preds else empty, tokens.seq, n)
            if moments:
                cols["mu"] = _split(torch.cat(mus) if mus else empty.double(), tokens.seq, n)
                cols["sigma"] = _split(torch.cat(sigmas) if sigmas else empty.double(), tokens.seq, n)
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
