"""One tiny unlearning setup shared by the trainer-level tests: 3 forget / 4 retain authors, a
400-token BPE tokenizer and a 1-layer, 32-wide Llama, all deterministic."""

import functools

from atwu_fast.data.formatting import encode_qa
from atwu_fast.finetune.tiny import ModelConfig, build_tiny_llama, train_tokenizer
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate, tokenizer_corpus

TINY_MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
MAX_POSITIONS = 80


@functools.lru_cache(maxsize=1)
def tiny_data():
    """(tokenizer, encoded splits) — built once per test process."""
    splits = generate(SyntheticConfig(n_forget_authors=3, n_retain_authors=4, n_holdout_authors=0, n_general=4))
    tok = train_tokenizer(tokenizer_corpus(splits), 400)
    enc = {k: [encode_qa(tok, r["question"], r["answer"], 64, r.get("spans")) for r in v] for k, v in splits.items()}
    return tok, enc


def tiny_model(tok, state_dict=None):
    """A fresh tiny model (seeded), optionally loaded with ``state_dict``."""
    model = build_tiny_llama(TINY_MODEL, tok, MAX_POSITIONS)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
