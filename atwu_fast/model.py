"""Model plumbing: build a tiny Llama, run the decoder without materialising logits, and turn the
last hidden states into per-token answer quantities through the LM-head loss op.

Convention (shifted as usual): the hidden state at position t−1 predicts the label at t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from atwu_kernels import linear_token_nll
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from .config import ModelConfig

IGNORE_INDEX = -100


def build_tiny_llama(cfg: ModelConfig, tokenizer, max_positions: int) -> LlamaForCausalLM:
    """A small Llama-style decoder built from a config (no download), deterministic in cfg.seed."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    return model


def decoder(model: PreTrainedModel) -> torch.nn.Module:
    """The base model (no LM head): its forward returns hidden states, never N×V logits."""
    return getattr(model, model.base_model_prefix)


def lm_head(model: PreTrainedModel) -> tuple[Tensor, Tensor | None]:
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def last_hidden(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, T, D] last hidden states (after the final norm: the LM head's input)."""
    return decoder(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


@dataclass
class AnswerTokens:
    """The valid (label ≠ −100) answer tokens of a padded batch, flattened.

    ``hidden_pred`` is the hidden state whose logits predict the token (position t−1);
    ``hidden_token`` the hidden state at the token's own position t.
    """

    hidden_pred: Tensor  # [N, D]
    hidden_token: Tensor  # [N, D]
    targets: Tensor  # [N]
    seq: Tensor  # [N] row index in the batch
    position: Tensor  # [N] position t of the token in its row


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


def token_nll(model: PreTrainedModel, tokens: AnswerTokens, chunk_size: int = 1024) -> Tensor:
    """Per-token NLL [N] through the LM head, chunked (no N×V buffer beyond one chunk)."""
    weight, bias = lm_head(model)
    return linear_token_nll(tokens.hidden_pred, weight, tokens.targets, bias=bias, chunk_size=chunk_size)


@torch.no_grad()
def greedy_generate(model: PreTrainedModel, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                    **generate_kwargs) -> list[str]:
    """Batched greedy decoding of left-padded prompts; returns the decoded continuations."""
    from .data import collate, decode_answer

    batch = collate([{"input_ids": p} for p in prompts], pad_id=tokenizer.pad_token_id, side="left")
    out = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **generate_kwargs,
    )
    continuations = out[:, batch["input_ids"].shape[1]:]
    return [decode_answer(tokenizer, row.tolist()) for row in continuations]
