"""The engine's per-token NLL (decoder forward, answer tokens, chunked LM-head op) is the model's own
loss token for token, including models that transform their logits (Gemma-2's soft cap, Cohere's
and Granite's scales)."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from atwu_fast.model.tokens import answer_tokens, last_hidden, logit_transform, token_nll

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    # a cap of 2 nats: most logits of a random model are capped, so an uncapped loss differs clearly
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": 2.0, "head_dim": 8}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.25}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
}


def tiny(name: str):
    config_name, model_name, extra = MODELS[name]
    if not hasattr(transformers, config_name):
        pytest.skip(f"this transformers has no {config_name}")
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**COMMON, **extra)
    config._attn_implementation = "eager"
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # a random LM head with logits wide enough for the cap / scale to matter
        model.get_output_embeddings().weight.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_engine_nll_is_the_models_own_loss_token_for_token(name):
    model = tiny(name)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        expected = F.cross_entropy(out.logits[:, :-1].float().reshape(-1, 97), labels[:, 1:].reshape(-1),
                                   reduction="none", ignore_index=-100)[labels[:, 1:].reshape(-1) != -100]
        tokens = answer_tokens(last_hidden(model, ids, mask), labels)
        nll = token_nll(model, tokens, chunk_size=5)
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll.mean(), out.loss, rtol=1e-5, atol=1e-5)
    if name != "llama":  # the transform is what makes them equal: without it the NLL is another number
        plain = torch.stack([F.cross_entropy(h @ model.get_output_embeddings().weight.T, t)
                             for h, t in zip(tokens.hidden_pred, tokens.targets)])
        assert (plain - expected).abs().max() > 1e-2
        assert any(v is not None for v in logit_transform(model).values())
