"""Per-token forget scores of a real-benchmark run: one batched pass over the forget rows (no
hidden states kept beyond a batch) that serves both span alignment and the report's heatmap."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from .io import atomic_write_json
from .report_html import TARGET_KINDS, TOKEN_SCORES, token_score_rows, token_scores_doc


@torch.no_grad()
def forget_token_scores(model, encoded: list[dict], pad_id: int, batch_size: int,
                        weigh: Callable | None = None) -> SimpleNamespace:
    """Flat per answer token (row-major over ``encoded``): ``seq`` (row), ``nll``, ``span_kind`` and
    ``weights`` = ``weigh(view)`` per batch (None without ``weigh`` or when it returns None); ``view``
    has ``nll`` and ``hidden(position)`` like :class:`~atwu_fast.eval.synthetic.ForgetTokens`."""
    from .data import collate
    from .model import answer_tokens, last_hidden, token_nll

    device = next(model.parameters()).device
    seq, nll, kinds = [], [], []
    weights: list | None = [] if weigh is not None else None  # None once weigh gives None
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], pad_id=pad_id).items()}
        tokens = answer_tokens(last_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])
        batch_nll = token_nll(model, tokens)
        if weights is not None:
            view = SimpleNamespace(nll=batch_nll,
                                   hidden=lambda pos, t=tokens: t.hidden_token if pos == "token" else t.hidden_pred)
            w = weigh(view)
            weights = None if w is None else [*weights, w.float().cpu()]
        seq.append(tokens.seq.cpu() + start)
        nll.append(batch_nll.float().cpu())
        kinds.append(batch["span_kind"][tokens.seq, tokens.position].cpu())
    return SimpleNamespace(seq=torch.cat(seq), nll=torch.cat(nll), span_kind=torch.cat(kinds),
                           weights=torch.cat(weights) if weights else None)


def save_token_scores(path: Path, method, tokenizer, rows: list[dict], encoded: list[dict], final: SimpleNamespace,
                      base: SimpleNamespace) -> None:
    """``<method>/token_scores.json`` for the report's heatmap: the method's weights when it has
    them, else the NLL change from ``base`` (the starting model)."""
    table = token_score_rows(tokenizer, rows, encoded, final.seq, final.nll, final.span_kind, final.weights, base.nll)
    atomic_write_json(Path(path) / TOKEN_SCORES, token_scores_doc(method, table, TARGET_KINDS))
