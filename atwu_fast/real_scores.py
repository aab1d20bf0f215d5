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
    from .distributed import join_rows, map_batches, split_rows
    from .model import answer_tokens, last_hidden, token_nll

    def batch_scores(m, part: list[dict]) -> list[tuple]:
        device = next(m.parameters()).device
        batch = {k: v.to(device) for k, v in collate(part, pad_id=pad_id).items()}
        tokens = answer_tokens(last_hidden(m, batch["input_ids"], batch["attention_mask"]), batch["labels"])
        batch_nll = token_nll(m, tokens)
        w = None
        if weigh is not None:
            view = SimpleNamespace(nll=batch_nll,
                                   hidden=lambda pos, t=tokens: t.hidden_token if pos == "token" else t.hidden_pred)
            w = weigh(view)
        kinds = batch["span_kind"][tokens.seq, tokens.position]
        return split_rows(tokens.seq, len(part), batch_nll.float(), kinds, None if w is None else w.float())

    rows = map_batches(model, encoded, batch_size, batch_scores)
    if not rows:
        empty = torch.zeros(0)
        return SimpleNamespace(seq=empty.long(), nll=empty, span_kind=empty.long(), weights=None)
    (nll, kinds, weights), seq = join_rows(rows)
    return SimpleNamespace(seq=seq, nll=nll, span_kind=kinds, weights=weights)


def save_token_scores(path: Path, method, tokenizer, rows: list[dict], encoded: list[dict], final: SimpleNamespace,
                      base: SimpleNamespace) -> None:
    """``<method>/token_scores.json`` for the report's heatmap: the method's weights when it has
    them, else the NLL change from ``base`` (the starting model)."""
    table = token_score_rows(tokenizer, rows, encoded, final.seq, final.nll, final.span_kind, final.weights, base.nll)
    atomic_write_json(Path(path) / TOKEN_SCORES, token_scores_doc(method, table, TARGET_KINDS))
