"""The fused path reproduces ``model(input_ids, labels=labels).loss`` and every parameter gradient."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from atwu_kernels import weighted_linear_cross_entropy  # noqa: E402

VOCAB, HIDDEN = 97, 32
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.3,
)


def _build(name):
    t = transformers
    if name == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(**COMMON)), None
    if name == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(**COMMON)), None
    if name == "gemma2":
        config = t.Gemma2Config(
            **COMMON,
            head_dim=8,
            final_logit_softcapping=2.0,
            attn_logit_softcapping=50.0,
            query_pre_attn_scalar=8,
            sliding_window=16,
        )
        return t.Gemma2ForCausalLM(config), 2.0
    if name == "gpt2":
        config = t.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=4, n_positions=64, initializer_range=0.3
        )
        return t.GPT2LMHeadModel(config), None
    raise AssertionError(name)


def _base(model):
    return model.transformer if hasattr(model, "transformer") else model.model


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma2", "gpt2"])
def test_fused_loss_matches_hf_model_loss(name):
    torch.manual_seed(0)
    model, softcap = _build(name)
    model.config._attn_implementation = "eager"
    model.train(False)
    input_ids = torch.randint(0, VOCAB, (3, 12))
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt
    labels[2, 9:] = -100  # padding

    expected = model(input_ids, labels=labels).loss
    expected.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    hidden = _base(model)(input_ids).last_hidden_state
    loss = weighted_linear_cross_entropy(
        hidden[:, :-1], model.get_output_embeddings().weight, labels[:, 1:], softcap=softcap, chunk_size=8
    )
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    got = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{name} grad {k}: {m}")
    if softcap is not None:  # the cap must matter at this scale, or the test could not catch its absence
        with torch.no_grad():
            uncapped = weighted_linear_cross_entropy(
                hidden[:, :-1], model.get_output_embeddings().weight, labels[:, 1:]
            )
        assert abs(uncapped.item() - expected.item()) > 1e-2
