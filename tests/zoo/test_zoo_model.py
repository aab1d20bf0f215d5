"""Every family through the rest of the engine: packing only where exact, greedy generation, save and
reload through the engine's loader, LoRA with its default targets; and a family whose logit transform
the engine does not know is refused at load time."""

from __future__ import annotations

import warnings

import model_zoo as zoo
import pytest
import torch
from fixtures.tiny import tiny_tokenizer

from atwu_fast.data.labels import IGNORE_INDEX
from atwu_fast.model.generation import greedy_generate
from atwu_fast.model.loading import load_pretrained
from atwu_fast.model.lora import apply_lora, linear_modules
from atwu_fast.model.probe import ModelCheckError, check_logit_transform, exact_packing, packing_leak
from atwu_fast.model.tokens import forward_answer_tokens, make_batch, token_nll

FAMILIES = list(zoo.FAMILIES)
LEAKY = {"opt", "bloom", "falcon_h1"}  # attention / state that ignores restarting position ids
FP32_NLL = 1e-4  # per-token NLL of the same rows through two fp32 paths: rounding only (see test_zoo_losses)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def rows(n: int = 3, seed: int = 5) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, zoo.VOCAB, (7 + 3 * i,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * 3 + ids[3:]
        out.append({"input_ids": ids, "labels": labels})
    return out


def engine_nll(model, batch_rows, packing: bool) -> torch.Tensor:
    with torch.no_grad():
        tokens, _ = forward_answer_tokens(model, make_batch(batch_rows, zoo.PAD, "cpu", packing=packing))
        nll = token_nll(model, tokens)
    order = torch.argsort(tokens.seq * 10_000 + tokens.position, stable=True)  # row-major, both layouts
    return nll[order]


def test_packing_is_used_only_where_exact(family):
    model = zoo.build(family)
    leak, tol = packing_leak(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = exact_packing(model, True)
    assert packed == (family not in LEAKY), (family, leak, tol)
    messages = [str(w.message) for w in caught if "packing disabled" in str(w.message)]
    assert len(messages) == (0 if packed else 1)
    if packed:  # where it is used, a packed batch gives the padded batch's numbers
        torch.testing.assert_close(engine_nll(model, rows(), True), engine_nll(model, rows(), False),
                                   rtol=0, atol=FP32_NLL)
    else:  # and where it is refused, packing would have given other numbers
        assert (engine_nll(model, rows(), True) - engine_nll(model, rows(), False)).abs().max() > 10 * FP32_NLL


def greedy_by_hand(model, prompt: list[int], steps: int) -> list[int]:
    """Argmax of the model's full forward over the growing sequence: no cache, no padding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


class Ids:
    pad_token_id = zoo.PAD


def test_greedy_generation_of_left_padded_batches_is_the_models_argmax(family):
    model = zoo.build(family)
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, zoo.VOCAB, (n,), generator=gen).tolist() for n in (5, 9)]
    got = greedy_generate(model, Ids(), prompts, max_new_tokens=5, batch_size=2, stop_ids=[],
                          decode=lambda ids: ",".join(map(str, ids)))
    want = [",".join(map(str, greedy_by_hand(model, p, 5))) for p in prompts]
    assert got == want, family


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_saved_model_reloads_through_the_engine_loader_with_the_same_losses(family, tokenizer, tmp_path):
    model = zoo.build(family, tokenizer=tokenizer)
    vocab = model.get_input_embeddings().weight.shape[0]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, tok = load_pretrained(str(tmp_path), device="cpu")  # runs the load-time loss probe
    assert loaded.get_input_embeddings().weight.shape[0] == vocab
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    batch = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows()]
    for r in batch:
        r["input_ids"] = [i % vocab for i in r["input_ids"]]
        r["labels"] = [i if i == IGNORE_INDEX else i % vocab for i in r["labels"]]
    torch.testing.assert_close(engine_nll(loaded, batch, False), engine_nll(model, batch, False), rtol=0, atol=0)


def test_lora_with_default_targets_adapts_every_decoder_linear_and_trains_only_adapters(family):
    model = zoo.build(family)
    expected = linear_modules(model)
    assert expected
    handle = apply_lora(model, rank=2)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in handle.model.named_modules() if n.endswith(".lora_A")}
    assert adapted == set(expected), family
    trainable = [n for n, p in handle.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    handle.model.train()
    for n, p in handle.model.named_parameters():  # B starts at 0: give it values so A's gradient is not 0
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    tokens, _ = forward_answer_tokens(handle.model, make_batch(rows(), zoo.PAD, "cpu"))
    token_nll(handle.model, tokens).mean().backward()
    grads = [p.grad for n, p in handle.model.named_parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_wrong_lora_target_is_one_line_with_the_models_names():
    model = zoo.build("gpt2")
    with pytest.raises(ValueError, match=r"LoRA targets q_proj are not .* its linear modules are: c_attn, c_fc, c_proj$"):
        apply_lora(model, rank=2, targets=["q_proj"])


# --------------------------------------------------------------------------- unknown transforms


class ScaledLlama(__import__("transformers").LlamaForCausalLM):
    """A made-up family that halves its logits in forward and says so in no config field."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


def test_a_family_with_an_unknown_transform_is_refused_at_load_time():
    model = zoo.build("llama")
    check_logit_transform(model)  # the real one passes
    fake = ScaledLlama(model.config).eval()
    fake.load_state_dict(model.state_dict())
    with pytest.raises(ModelCheckError, match=r"model family 'llama' \(ScaledLlama\): the engine's per-token loss "
                                              r"differs from the model's own logits by up to [0-9.e+-]+ nats"):
        check_logit_transform(fake)


def test_a_config_transform_of_unknown_meaning_is_refused():
    model = zoo.build("llama")
    model.config.logits_scaling = 3.0  # divide (Granite) or multiply (HyperCLOVAX)? unknown for 'llama'
    with pytest.raises(ModelCheckError, match="sets logits_scaling=3.0, and how it applies to the logits is unknown"):
        check_logit_transform(model)


def test_the_loader_refuses_an_unknown_transform_in_one_line(tmp_path, tokenizer, monkeypatch):
    model = zoo.build("llama", tokenizer=tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def scaled(*args, **kwargs):
        loaded = real(*args, **kwargs)
        fake = ScaledLlama(loaded.config)
        fake.load_state_dict(loaded.state_dict())
        return fake

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", scaled)
    with pytest.raises(ModelCheckError) as err:
        load_pretrained(str(tmp_path), device="cpu")
    assert "\n" not in str(err.value)
