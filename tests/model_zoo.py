"""Tiny random models of every causal-LM family the engine verifies, built from transformers' own
config classes (2 layers, hidden 64, vocabulary 384), so that the tests run the real implementations.

Initialised so that each family's logit transform matters: a random LM head gives logits near 0,
where a softcap or a scale changes almost nothing, so the head's rows are drawn with standard
deviation ``HEAD_STD`` / sqrt(hidden) (normalised hidden states give logits of std ~``HEAD_STD`` nats), the caps are small (5 nats) and the
scales far from 1 (0.25, 4, 0.3).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from fixtures.real_data import in_ci

VOCAB = 384
HIDDEN = 64
PAD, BOS, EOS = 0, 1, 2
LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
IDS = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
GPT_LIKE = dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=256)

# family -> (config class, its arguments, the transform the family applies to hidden @ W.T + b)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", LLAMA_LIKE),
    "mistral": ("MistralConfig", LLAMA_LIKE),
    "qwen2": ("Qwen2Config", LLAMA_LIKE),  # Qwen2 and Qwen2.5 share this architecture
    "qwen3": ("Qwen3Config", dict(LLAMA_LIKE, head_dim=16)),
    "gemma": ("GemmaConfig", dict(LLAMA_LIKE, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(LLAMA_LIKE, head_dim=16, final_logit_softcapping=5.0, sliding_window=8)),
    "gemma3_text": ("Gemma3TextConfig", dict(LLAMA_LIKE, head_dim=16, final_logit_softcapping=5.0, sliding_window=8)),
    "gemma3": ("Gemma3Config", dict(
        text_config=dict(LLAMA_LIKE, head_dim=16, final_logit_softcapping=5.0, sliding_window=8, **IDS),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14))),
    "phi": ("PhiConfig", LLAMA_LIKE),
    "phi3": ("Phi3Config", LLAMA_LIKE),
    "gpt2": ("GPT2Config", GPT_LIKE),
    "gpt_neox": ("GPTNeoXConfig", LLAMA_LIKE),
    "gptj": ("GPTJConfig", dict(GPT_LIKE, rotary_dim=8)),
    "opt": ("OPTConfig", dict(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=128, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=HIDDEN)),
    "bloom": ("BloomConfig", dict(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=2, n_head=4)),
    "falcon": ("FalconConfig", dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4)),
    "falcon_h1": ("FalconH1Config", dict(LLAMA_LIKE, lm_head_multiplier=0.3)),
    "olmo": ("OlmoConfig", LLAMA_LIKE),
    "olmo2": ("Olmo2Config", LLAMA_LIKE),
    "olmo3": ("Olmo3Config", LLAMA_LIKE),
    "stablelm": ("StableLmConfig", LLAMA_LIKE),
    "cohere": ("CohereConfig", dict(LLAMA_LIKE, logit_scale=0.25)),
    "cohere2": ("Cohere2Config", dict(LLAMA_LIKE, logit_scale=0.25, sliding_window=8)),
    "granite": ("GraniteConfig", dict(LLAMA_LIKE, logits_scaling=4.0)),
    "granitemoe": ("GraniteMoeConfig", dict(LLAMA_LIKE, logits_scaling=4.0)),
    "hyperclovax": ("HyperCLOVAXConfig", dict(LLAMA_LIKE, logits_scaling=0.25)),
}
# families whose logits are hidden @ W.T (+ b) as they are: the rest must have a transform that matters
# (the multimodal Gemma-3 keeps a cap in its text config but does not apply it)
PLAIN = {"gemma3", "llama", "mistral", "qwen2", "qwen3", "gemma", "phi", "phi3", "gpt2", "gpt_neox", "gptj", "opt", "bloom",
         "falcon", "olmo", "olmo2", "olmo3", "stablelm"}
HEAD_STD = 3.0  # target std of a logit: a few nats, so caps at 5 and scales of 0.25-4 change the loss


def config(family: str, tokenizer=None):
    """The family's tiny config; with ``tokenizer``, its vocabulary size and special-token ids."""
    name, kwargs = FAMILIES[family]
    cls = getattr(transformers, name, None)
    if cls is None:  # an older transformers: skipped with the reason, but never silently in CI
        require = pytest.fail if in_ci() else pytest.skip
        require(f"this transformers ({transformers.__version__}) has no {name}")
    ids, vocab = dict(IDS), VOCAB
    if tokenizer is not None:
        vocab = len(tokenizer)
        ids = {k: getattr(tokenizer, k) for k in IDS}
    if family == "gemma3":
        text = dict(kwargs["text_config"], **ids)
        text.update({k: vocab for k in ("vocab_size",) if k in text})
        return cls(**dict(kwargs, text_config=text))
    kwargs = dict(kwargs, **ids)
    kwargs["vocab_size"] = vocab
    return cls(**kwargs)


def build(family: str, seed: int = 0, attn: str | None = None, tokenizer=None) -> transformers.PreTrainedModel:
    """A tiny random ``AutoModelForCausalLM`` of ``family`` in eval mode, its LM head drawn wide."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {} if attn is None else {"attn_implementation": attn}
        model = transformers.AutoModelForCausalLM.from_config(config(family, tokenizer), **kwargs)
    widen_head(model)
    return model.eval()


@torch.no_grad()
def widen_head(model) -> None:
    head = model.get_output_embeddings()
    head.weight.normal_(0, HEAD_STD / HIDDEN ** 0.5)
    if getattr(head, "bias", None) is not None:
        head.bias.normal_(0, 1.0)


def random_batch(n_rows: int = 3, length: int = 14, seed: int = 1) -> dict:
    """Right-padded ids (row 2 padded after 10), labels masked on a 4-token prompt and the padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n_rows, length), generator=gen)
    mask = torch.ones_like(ids)
    if n_rows > 2:
        mask[2, 10:] = 0
        ids[2, 10:] = PAD
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
