"""Model-side quantities for the real-benchmark evaluations, batched and without N×V logits.

Per-token NLL goes through the chunked LM-head op on the answer tokens only
(:func:`atwu_fast.model.tokens.map_answer_tokens`). Argmax predictions (extraction strength, exact
memorisation) and the log-prob moments μ_t, σ_t that Min-K%++ needs are computed chunk by chunk
over those tokens (``chunk × V`` at a time; the moments in float64, :func:`logprob_moments`, the only
implementation of them). Generation is batched greedy decoding of left-padded prompts
(:func:`atwu_fast.model.generation.greedy_generate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atwu_kernels.families import model_logit_transform

from ..model.distributed import SINGLE, DistContext
from ..model.generation import greedy_generate
from ..model.tokens import lm_head, map_answer_tokens, token_nll
from .metrics import MIN_K_PP_VAR_FLOOR


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
    values = values.detach()
    if values.dtype in (torch.bfloat16, torch.float16):  # numpy has no bf16
        values = values.float()
    values = values.cpu().numpy()
    seq = seq.cpu().numpy()
    return [values[seq == i] for i in range(n)]


def logprob_moments(logits: torch.Tensor, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """μ_t = Σ_v p_v log p_v and σ_t = sqrt(max(Σ_v p_v (log p_v)² − μ_t², 1e−6)) of [T, V] logits, in float64.

    The mean and standard deviation of log p(v) under v ~ p (p = softmax of the row): Min-K%++'s moments,
    the one implementation every Min-K%++ path uses. The variance is clamped at
    :data:`~atwu_fast.eval.metrics.MIN_K_PP_VAR_FLOOR` as open-unlearning does, so a sharpened
    distribution gets σ_t = 1e−3. Log-probs are valid input too (their log-softmax is themselves).
    float32 would leave ~1e-6 errors (the variance cancels). ``rows`` logit rows at a time bound the
    float64 copies to rows × V.
    """
    mus, sigmas = [], []
    for lo in range(0, logits.shape[0], rows):
        lp = torch.log_softmax(logits[lo:lo + rows].double(), dim=-1)
        p = lp.exp()
        mu = (p * lp).sum(-1)
        mus.append(mu)
        sigmas.append(((p * lp * lp).sum(-1) - mu * mu).clamp_min(MIN_K_PP_VAR_FLOOR).sqrt())
    empty = logits.new_zeros(0, dtype=torch.float64)
    return (torch.cat(mus), torch.cat(sigmas)) if mus else (empty, empty)


def chunk_logits(model, hidden: torch.Tensor, chunk_size: int):
    """The model's fp32 logits (its softcap / scale applied) of ``hidden`` rows, ``chunk_size`` at a time."""
    weight, bias = lm_head(model)
    transform = model_logit_transform(model)
    for lo in range(0, hidden.shape[0], chunk_size):
        logits = hidden[lo:lo + chunk_size] @ weight.T
        if bias is not None:
            logits = logits + bias
        yield transform.apply(logits)


def row_tokens(model, rows: list[dict], pad_id: int, batch_size: int, argmax: bool = False,
               moments: bool = False, chunk_size: int = 1024, ctx: DistContext = SINGLE) -> RowTokens:
    """Teacher-forced answer-token NLL (and optionally argmax ids, μ_t, σ_t) of encoded rows (sharded
    over the ranks of a distributed ``ctx``, every rank getting every row)."""
    def batch_rows(m, tokens, kinds, part: list[dict]) -> list[dict]:
        n = len(part)
        cols = {"nll": _split(token_nll(m, tokens, chunk_size), tokens.seq, n),
                "labels": _split(tokens.targets, tokens.seq, n)}
        if argmax or moments:
            preds, mus, sigmas = [], [], []
            for logits in chunk_logits(m, tokens.hidden_pred, chunk_size):
                if argmax:
                    preds.append(logits.argmax(-1))
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

    plain = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    per_row = map_answer_tokens(model, plain, pad_id, batch_size, batch_rows, ctx=ctx)
    column = lambda key: [r[key] for r in per_row]  # noqa: E731
    return RowTokens(column("nll"), column("labels"), column("argmax") if argmax else None,
                     column("mu") if moments else None, column("sigma") if moments else None)


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
             stop_ids: list[int], stop_strings: tuple[str, ...] = (), ctx: DistContext = SINGLE) -> list[str]:
    """Greedy continuations of left-padded prompts, cut at the first stop id / stop string, stripped
    (sharded over the ranks of a distributed ``ctx``)."""
    def decode(ids: list[int]) -> str:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for s in stop_strings:
            if s and s in text:
                text = text.split(s)[0]
        return text.strip()

    return greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size, stop_ids, decode, ctx=ctx)
