"""Per-token quantities of a causal LM without N×V logits: the decoder forward over a padded or
packed batch, the valid answer tokens, their NLL through the chunked LM-head op, and the one
batched evaluation loop over encoded rows (:func:`map_answer_tokens`).

Convention (shifted as usual): the hidden state at position t−1 predicts the label at t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from atwu_kernels import linear_token_nll
from atwu_kernels.families import model_logit_transform

from ..data.collate import collate, pack_rows
from ..data.labels import IGNORE_INDEX
from .distributed import SINGLE, DistContext, map_batches


def decoder(model: PreTrainedModel) -> torch.nn.Module:
    """The base model (no LM head): its forward returns hidden states, never N×V logits."""
    return getattr(model, model.base_model_prefix)


def lm_head(model: PreTrainedModel) -> tuple[Tensor, Tensor | None]:
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def logit_transform(model: PreTrainedModel) -> dict:
    """The model's own map from LM-head outputs to logits as the kernels' ``softcap`` / ``logit_scale``
    keyword arguments, by family (:func:`atwu_kernels.families.model_logit_transform`: Gemma-2/3 caps,
    Cohere's and Granite's scales, HyperCLOVAX's and Falcon-H1's multipliers, ...)."""
    return model_logit_transform(model).kwargs()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def last_hidden(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, T, D] last hidden states (after the final norm: the LM head's input)."""
    return decoder(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


@dataclass
class AnswerTokens:
    """The valid (label ≠ −100) answer tokens of a batch, flattened.

    ``hidden_pred`` is the hidden state whose logits predict the token (position t−1);
    ``hidden_token`` the hidden state at the token's own position t.
    """

    hidden_pred: Tensor  # [N, D]
    hidden_token: Tensor  # [N, D]
    targets: Tensor  # [N]
    seq: Tensor  # [N] row index in the batch
    position: Tensor  # [N] position t of the token in its row
    nll: Tensor | None = None  # [N] per-token NLL, where a caller computed it
    span_kind: Tensor | None = None  # [N] ground-truth span kinds, where the rows carry them

    def hidden(self, position: str) -> Tensor:
        """The hidden rows a token scorer reads: the token's own position ("token") or its predictor's."""
        return self.hidden_token if position == "token" else self.hidden_pred


def answer_tokens(hidden: Tensor, labels: Tensor) -> AnswerTokens:
    valid = labels[:, 1:] != IGNORE_INDEX
    batch, length = valid.shape
    rows = torch.arange(batch, device=labels.device)[:, None].expand(batch, length)
    positions = torch.arange(1, length + 1, device=labels.device)[None, :].expand(batch, length)
    return AnswerTokens(
        hidden_pred=hidden[:, :-1][valid],
        hidden_token=hidden[:, 1:][valid],
        targets=labels[:, 1:][valid],
        seq=rows[valid],
        position=positions[valid],
    )


def make_batch(rows: list[dict], pad_id: int, device, packing: bool = False) -> dict[str, Tensor]:
    """Right-padded batch of encoded rows on ``device``, or with ``packing`` their real tokens
    concatenated into one sequence (:func:`~atwu_fast.data.collate.pack_rows`)."""
    batch = pack_rows(rows) if packing else collate(rows, pad_id=pad_id)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward_answer_tokens(model: PreTrainedModel, batch: dict) -> tuple[AnswerTokens, Tensor | None]:
    """ONE decoder forward over a padded or packed batch: its answer tokens (``seq`` = the row) and
    their span kinds (None when the rows carry none)."""
    if "position_ids" in batch:  # packed: one row, boundaries from the restarting positions
        hidden = decoder(model)(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                use_cache=False).last_hidden_state
        tokens = answer_tokens(hidden, batch["labels"])
        tokens.span_kind = batch["span_kind"][0, tokens.position] if "span_kind" in batch else None
        tokens.seq = batch["seq"][tokens.position]
        return tokens, tokens.span_kind
    tokens = answer_tokens(last_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])
    tokens.span_kind = batch["span_kind"][tokens.seq, tokens.position] if "span_kind" in batch else None
    return tokens, tokens.span_kind


def token_nll(model: PreTrainedModel, tokens: AnswerTokens, chunk_size: int = 1024) -> Tensor:
    """Per-token NLL [N] through the LM head (with the model's logit softcap / scale), chunked (no N×V
    buffer beyond one chunk: the logits are recomputed in backward, never kept, so that
    ``train.loss_chunk_size`` bounds the head's memory as the planner models it)."""
    weight, bias = lm_head(model)
    return linear_token_nll(tokens.hidden_pred, weight, tokens.targets, bias=bias, chunk_size=chunk_size,
                            keep_logits=False, **logit_transform(model))


def map_answer_tokens(model: PreTrainedModel, rows: list[dict], pad_id: int, batch_size: int,
                      fn: Callable[[PreTrainedModel, AnswerTokens, Tensor | None, list[dict]], list],
                      starts=None, ctx: DistContext = SINGLE) -> list:
    """The batched no-grad loop over encoded rows: per batch, one forward and its answer tokens, then
    ``fn(model, tokens, span_kinds, part)`` returns one result per row of ``part``. Sharded over the
    ranks of a distributed ``ctx`` (results in row order on every rank;
    :func:`~atwu_fast.model.distributed.map_batches`); ``starts`` may supply the batch offsets (a
    progress bar)."""
    @torch.no_grad()
    def batch_results(m, part: list[dict]) -> list:
        tokens, kinds = forward_answer_tokens(m, make_batch(part, pad_id, model_device(m)))
        return fn(m, tokens, kinds, part)

    return map_batches(model, rows, batch_size, batch_results, starts, ctx=ctx)
