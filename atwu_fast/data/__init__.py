"""The embedded fictitious-authors benchmark: generation, tokenizer, encoding, batching."""

from .collate import collate
from .encode import (
    ANSWER_PREFIX,
    IGNORE_INDEX,
    PROMPT_TEMPLATE,
    decode_answer,
    encode_prompt,
    encode_qa,
    encode_row,
    format_answer,
    format_prompt,
    tokenizer_corpus,
)
from .synthetic import SPLITS, generate, load_splits, save_splits
from .tokenizer import train_tokenizer

__all__ = [
    "ANSWER_PREFIX", "IGNORE_INDEX", "PROMPT_TEMPLATE", "SPLITS", "collate", "decode_answer", "encode_prompt",
    "encode_qa", "encode_row", "format_answer", "format_prompt", "generate", "load_splits", "save_splits",
    "tokenizer_corpus", "train_tokenizer",
]
