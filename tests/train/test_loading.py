"""Loading options: dtype, attention choice, gradient checkpointing, padding-free packing."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import atwu_fast.model.loading as loading
from atwu_fast.data.collate import pack_rows
from atwu_fast.model.loading import apply_memory_options, choose_attn_implementation
from atwu_fast.model.tokens import answer_tokens, decoder, last_hidden


def tiny_llama(**kw):
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa", **kw)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_auto_attention_is_sdpa_without_flash_attn_or_cuda(monkeypatch):
    assert choose_attn_implementation("auto", "cpu", "bfloat16") == "sdpa"
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    assert choose_attn_implementation("auto", "cuda", "bfloat16") == "flash_attention_2"
    assert choose_attn_implementation("auto", "cuda", "float32") == "sdpa"  # FA2 needs half precision
    assert choose_attn_implementation("auto", "cpu", "bfloat16") == "sdpa"


def test_explicit_flash_attention_where_unavailable_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: False)
    with pytest.raises(RuntimeError, match="flash-attn package is not installed") as err:
        choose_attn_implementation("flash_attention_2", "cuda", "bfloat16")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        choose_attn_implementation("flash_attention_2", "cpu", "bfloat16")


def test_bf16_weights_and_attention_are_applied():
    model = apply_memory_options(tiny_llama(), "bfloat16", "eager")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.config._attn_implementation == "eager"


def test_gradient_checkpointing_saves_less_and_gives_the_same_gradients():
    from atwu_fast.plan.planner import saved_tensor_bytes

    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones_like(ids)
    grads, saved = [], []
    for checkpointing in (False, True):
        model = apply_memory_options(tiny_llama(), "float32", "sdpa", gradient_checkpointing=checkpointing).train()
        assert model.model.gradient_checkpointing == checkpointing
        nbytes, hidden = saved_tensor_bytes(lambda m=model: last_hidden(m, ids, mask), exclude=list(model.parameters()))
        hidden.pow(2).mean().backward()
        saved.append(nbytes)
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert saved[1] < saved[0] / 3  # only the layers' inputs are kept
    torch.testing.assert_close(grads[0], grads[1])


def test_packed_rows_give_the_same_hidden_states_as_padded_rows():
    model = tiny_llama().eval()
    lengths = [5, 9, 3]
    rows = [{"input_ids": torch.randint(3, 97, (n,)).tolist(), "labels": [-100, -100] + [1] * (n - 2)}
            for n in lengths]
    packed = pack_rows(rows)
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    with torch.no_grad():
        hidden = decoder(model)(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                                use_cache=False).last_hidden_state[0]
        for row, start in zip(rows, packed["offsets"].tolist()):
            ids = torch.tensor(row["input_ids"])[None]
            alone = last_hidden(model, ids, torch.ones_like(ids))[0]
            torch.testing.assert_close(hidden[start:start + len(alone)], alone, rtol=1e-5, atol=1e-5)
    tokens = answer_tokens(hidden[None], packed["labels"])
    assert len(tokens.targets) == sum(n - 2 for n in lengths)  # no prediction across a row boundary
