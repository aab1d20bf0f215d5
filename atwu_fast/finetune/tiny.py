"""Tiny Llama-style models built from a config (no download) and a byte-level BPE tokenizer trained
locally (offline, deterministic) on a benchmark's own text: the models of the embedded benchmark and
of the laptop-scale protocols."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..config import check, option


@dataclass
class TokenizerConfig:
    vocab_size: int = option("byte-level BPE vocabulary size", 1024)
    max_length: int = option("maximum tokens per encoded question+answer", 96)

    def validate(self) -> None:
        check(self.vocab_size >= 300, "tokenizer.vocab_size must be >= 300 (256 bytes + specials)")
        check(self.max_length >= 8, "tokenizer.max_length must be >= 8")


@dataclass
class ModelConfig:
    """A small Llama-style decoder built from a transformers config."""

    hidden_size: int = option("model width D", 128)
    num_layers: int = option("decoder layers", 2)
    num_heads: int = option("attention heads", 4)
    intermediate_size: int = option("MLP width", 384)
    tie_embeddings: bool = option("tie the LM head to the input embeddings", True)
    seed: int = option("initialisation seed of the tiny models", 0)

    def validate(self) -> None:
        check(self.hidden_size % self.num_heads == 0, "model.hidden_size must be divisible by model.num_heads")
        check(self.num_layers >= 1, "model.num_layers must be >= 1")


def tofu_model() -> ModelConfig:
    """The tiny model of the laptop-scale TOFU protocol (chosen by measurement: docs/benchmarks.md, "TOFU at laptop scale")."""
    return ModelConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=384)


@dataclass
class TinyConfig:
    """``--model tiny``: a small Llama built from a config, with a byte-level BPE tokenizer trained on the
    benchmark's text."""

    vocab_size: int = option("byte-level BPE vocabulary size of the tiny model's tokenizer", 2048)
    model: ModelConfig = field(default_factory=tofu_model)

    def validate(self) -> None:
        check(self.vocab_size >= 300, "tiny.vocab_size must be >= 300 (256 bytes + specials)")


BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [BOS, EOS, PAD]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation, no prefix space) on ``texts``.

    Special tokens get ids 0, 1, 2 (``<s>``, ``</s>``, ``<pad>``); pad is distinct from eos, so a
    genuine eos is never mistaken for padding. No post-processor: callers add bos/eos explicitly.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


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
