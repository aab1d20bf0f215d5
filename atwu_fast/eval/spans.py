"""Which tokens a method weighs: the per-token view of the forget answers (NLL, ground-truth span
kind, the method's weight) and its alignment with the ground truth (AUROC / average precision of the
method's token scores against the forget-specific tokens)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from ..data.labels import POOLED, UNIQUE
from ..model.distributed import SINGLE, DistContext, join_rows, split_rows
from ..model.tokens import AnswerTokens, map_answer_tokens, token_nll
from . import metrics


@dataclass
class ForgetTokenView:
    """Per answer token of the forget rows, row-major: its row (``seq``), NLL, span kind and weight."""

    seq: torch.Tensor
    nll: torch.Tensor
    span_kind: torch.Tensor
    weights: Optional[torch.Tensor] = None


def forget_token_view(model, encoded: list[dict], pad_id: int, batch_size: int,
                      weigh: Optional[Callable[[AnswerTokens, list[dict]], Optional[torch.Tensor]]] = None,
                      starts=None, ctx: DistContext = SINGLE) -> ForgetTokenView:
    """One batched no-grad pass over the encoded forget rows (no hidden state kept beyond a batch;
    sharded over the ranks of a distributed ``ctx``, every rank getting the whole view).
    ``weigh(tokens, rows)`` (``tokens.nll``, ``.span_kind``, ``.hidden(position)`` set; ``rows`` the
    batch's encoded rows) gives the method's weights."""
    def batch_view(m, tokens: AnswerTokens, kinds, part: list[dict]) -> list[tuple]:
        tokens.nll = token_nll(m, tokens)
        weights = weigh(tokens, part) if weigh is not None else None
        return split_rows(tokens.seq, len(part), tokens.nll.float(), kinds,
                          None if weights is None else weights.float())

    rows = map_answer_tokens(model, encoded, pad_id, batch_size, batch_view, starts, ctx=ctx)
    if not rows:
        empty = torch.zeros(0)
        return ForgetTokenView(empty.long(), empty, empty.long())
    (nll, kinds, weights), seq = join_rows(rows)
    return ForgetTokenView(seq, nll, kinds, weights)


def span_alignment(weights: torch.Tensor, span_kind: torch.Tensor) -> dict:
    """AUROC / AP of token weights against forget-specific (UNIQUE) tokens and against all fact tokens."""
    w = weights.detach().double().numpy()
    unique = (span_kind == UNIQUE).numpy().astype(int)
    any_fact = (span_kind >= POOLED).numpy().astype(int)
    return {
        "span_auroc": metrics.span_auroc(w, unique),
        "span_ap": metrics.span_average_precision(w, unique),
        "span_auroc_all": metrics.span_auroc(w, any_fact),
        "span_ap_all": metrics.span_average_precision(w, any_fact),
    }


def method_alignment(view: ForgetTokenView, base: ForgetTokenView) -> dict:
    """Span alignment of a method at one checkpoint. ``span_auroc`` / ``span_ap`` (and ``_all``) rank
    the tokens by the method's token score, the one ``token_scores.json`` and the report show: the
    weights it computes (ATWU's learned scores, WGA/SatImp weights), else the NLL increase over
    ``base``, the model before unlearning — for the methods that weigh every token of a row alike
    (gradient ascent/difference, NPO, SimNPO) and for the hard-mask controls, whose weights are the
    ground truth itself. ``span_auroc_delta`` / ``span_ap_delta`` rank them by the NLL increase for
    every method: where the forgetting landed."""
    delta = view.nll - base.nll
    scores = view.weights if view.weights is not None else delta
    moved = span_alignment(delta, view.span_kind)
    return {**span_alignment(scores, view.span_kind), "span_auroc_delta": moved["span_auroc"],
            "span_ap_delta": moved["span_ap"]}
