"""Loading: dtype, attention choice, gradient checkpointing, padding-free packing, and a checkpoint's
vocabulary kept when the tokenizer gets a pad token."""

import warnings

import model_zoo
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import atwu_fast.model.loading as loading
from atwu_fast.data.collate import pack_rows
from atwu_fast.model.loading import apply_memory_options, choose_attn_implementation
from atwu_fast.model.probe import ModelCheckError
from atwu_fast.model.tokens import answer_tokens, decoder, last_hidden


def tiny_llama(**kw):
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa", **kw)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_auto_attention_is_sdpa_without_flash_attn_or_cuda(monkeypatch):
    assert choose_attn_implementation("auto", "cpu", "bfloat16", LlamaForCausalLM) == "sdpa"
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    assert choose_attn_implementation("auto", "cuda", "bfloat16", LlamaForCausalLM) == "flash_attention_2"
    assert choose_attn_implementation("auto", "cuda", "float32", LlamaForCausalLM) == "sdpa"  # FA2 needs half
    assert choose_attn_implementation("auto", "cpu", "bfloat16", LlamaForCausalLM) == "sdpa"


def test_explicit_flash_attention_where_unavailable_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: False)
    with pytest.raises(ModelCheckError, match="flash-attn package is not installed") as err:
        choose_attn_implementation("flash_attention_2", "cuda", "bfloat16", LlamaForCausalLM)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    with pytest.raises(ModelCheckError, match="needs a CUDA device"):
        choose_attn_implementation("flash_attention_2", "cpu", "bfloat16", LlamaForCausalLM)


@pytest.mark.parametrize(("family", "expected"), [("gemma2", "eager"), ("bloom", "eager"), ("llama", "sdpa")])
def test_auto_attention_asks_the_model(family, expected):
    model = model_zoo.build(family)
    assert choose_attn_implementation("auto", "cpu", "float32", model) == expected
    assert choose_attn_implementation("auto", "cpu", "float32", type(model)) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot set its attention" warning, no fallback
        apply_memory_options(model, "float32", "auto")
    assert model.config._attn_implementation == expected
    with torch.no_grad():
        model(input_ids=torch.randint(3, 100, (2, 7)))


def test_explicit_attention_the_model_does_not_support_is_a_one_line_error():
    gemma2, bloom = model_zoo.build("gemma2"), model_zoo.build("bloom")
    with pytest.raises(ModelCheckError, match="Gemma2ForCausalLM does not support attn_implementation=sdpa") as err:
        choose_attn_implementation("sdpa", "cpu", "float32", gemma2)
    assert "\n" not in str(err.value) and "flash_attention_2, eager" in str(err.value)
    with pytest.raises(ModelCheckError, match="Gemma2ForCausalLM does not support attn_implementation=sdpa"):
        apply_memory_options(gemma2, "float32", "sdpa")
    assert gemma2.config._attn_implementation == "eager"
    for requested in ("sdpa", "flash_attention_2"):
        with pytest.raises(ModelCheckError, match=f"BloomForCausalLM does not support attn_implementation={requested}; "
                                               "it supports eager"):
            choose_attn_implementation(requested, "cuda", "bfloat16", bloom)
    assert choose_attn_implementation("eager", "cpu", "float32", gemma2) == "eager"


def test_flash_attention_only_where_installed_on_cuda_in_half_precision_and_supported(monkeypatch):
    from transformers import BloomForCausalLM, Gemma2ForCausalLM

    no_fa2 = type("NoFlashLlama", (LlamaForCausalLM,), {"_supports_flash_attn": False})
    for installed in (False, True):
        monkeypatch.setattr(loading, "flash_attn_installed", lambda installed=installed: installed)
        for device in ("cpu", "cuda"):
            for dtype in ("float32", "bfloat16", "float16"):
                fa2 = installed and device == "cuda" and dtype != "float32"
                picks = {cls: choose_attn_implementation("auto", device, dtype, cls)
                         for cls in (LlamaForCausalLM, Gemma2ForCausalLM, BloomForCausalLM, no_fa2)}
                assert picks[LlamaForCausalLM] == ("flash_attention_2" if fa2 else "sdpa")
                assert picks[Gemma2ForCausalLM] == ("flash_attention_2" if fa2 else "eager")
                assert picks[BloomForCausalLM] == "eager"
                assert picks[no_fa2] == "sdpa"
    with pytest.raises(ModelCheckError, match="NoFlashLlama does not support attn_implementation=flash_attention_2"):
        choose_attn_implementation("flash_attention_2", "cuda", "bfloat16", no_fa2)
    assert choose_attn_implementation("flash_attention_2", "cuda", "bfloat16", Gemma2ForCausalLM) == "flash_attention_2"


def test_a_model_that_cannot_switch_attention_keeps_the_one_it_was_built_with(monkeypatch):
    fixed = type("FixedLlama", (LlamaForCausalLM,), {"_can_set_attn_implementation": classmethod(lambda cls: False)})
    model = fixed(tiny_llama().config)
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    assert choose_attn_implementation("auto", "cuda", "bfloat16", model) == "sdpa"
    with pytest.raises(ModelCheckError, match="FixedLlama does not support attn_implementation=eager; it supports sdpa"):
        choose_attn_implementation("eager", "cpu", "float32", model)
    assert choose_attn_implementation("auto", "cuda", "bfloat16", fixed) == "flash_attention_2"  # not built yet


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


# --------------------------------------------------------------------------- vocabulary kept


def word_tokenizer(n_tokens: int):
    """A word-level tokenizer of ``n_tokens`` tokens (eos at 0), no pad and no unk token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, **{f"w{i}": i for i in range(1, n_tokens)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def checkpoint(tmp_path, family: str, n_tokens: int):
    model = model_zoo.build(family)
    word_tokenizer(n_tokens).save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # untied and tied LM head
def test_a_padded_vocabulary_is_kept_when_the_pad_token_fits(tmp_path, family):
    original = checkpoint(tmp_path, family, 100)
    assert original.get_input_embeddings().weight.shape[0] == model_zoo.VOCAB == 384
    model, tokenizer = loading.load_pretrained(str(tmp_path), device="cpu")
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token_id == 100 == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == 384 == model.config.vocab_size
    torch.testing.assert_close(model.get_output_embeddings().weight, original.get_output_embeddings().weight,
                               rtol=0, atol=0)
    torch.testing.assert_close(model.get_input_embeddings().weight, original.get_input_embeddings().weight,
                               rtol=0, atol=0)
    model.save_pretrained(tmp_path / "saved")
    from transformers import AutoConfig, AutoModelForCausalLM

    assert AutoConfig.from_pretrained(tmp_path / "saved").vocab_size == 384
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert reloaded.get_output_embeddings().weight.shape[0] == 384


def test_a_full_vocabulary_grows_by_one_row_for_the_pad_token(tmp_path):
    original = checkpoint(tmp_path, "llama", 384)
    model, tokenizer = loading.load_pretrained(str(tmp_path), device="cpu")
    assert tokenizer.pad_token_id == 384 and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == 385 == model.config.vocab_size
    head = model.get_output_embeddings().weight
    assert head.shape[0] == 385
    torch.testing.assert_close(head[:384], original.get_output_embeddings().weight, rtol=0, atol=0)
    ids = torch.tensor([[1, 2, 384]])
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 3, 385)


def test_a_tokenizer_with_a_pad_token_leaves_the_model_alone(tmp_path):
    from transformers import AutoTokenizer

    checkpoint(tmp_path, "llama", 100)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.pad_token = "w7"
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer = loading.load_pretrained(str(tmp_path), device="cpu")
    assert tokenizer.pad_token_id == 7 and len(tokenizer) == 100
    assert model.get_input_embeddings().weight.shape[0] == 384
