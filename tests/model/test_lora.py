"""LoRA through peft: adapters train, save/reload round-trips, the disabled adapter is the base."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from atwu_fast.data.collate import collate
from atwu_fast.data.formatting import encode_qa
from atwu_fast.finetune.tiny import ModelConfig, build_tiny_llama, train_tokenizer
from atwu_fast.methods import get_method
from atwu_fast.methods.npo import NPOParams
from atwu_fast.model.loading import build_unlearn_model, save_unlearned
from atwu_fast.model.lora import apply_lora, load_adapter
from atwu_fast.model.tokens import answer_tokens, last_hidden, token_nll
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate, tokenizer_corpus
from atwu_fast.train.config import EfficiencyConfig, TrainConfig
from atwu_fast.train.trainer import Unlearner

MODEL = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    splits = generate(SyntheticConfig(n_forget_authors=2, n_retain_authors=3, n_holdout_authors=0, n_general=2))
    tok = train_tokenizer(tokenizer_corpus(splits), 400)
    enc = {k: [encode_qa(tok, r["question"], r["answer"], 64) for r in v] for k, v in splits.items()}
    base_dir = tmp_path_factory.mktemp("base")
    build_tiny_llama(MODEL, tok, 80).save_pretrained(base_dir)
    return tok, enc, base_dir


def load(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


def nll(model, rows, pad_id):
    batch = collate(rows, pad_id=pad_id)
    with torch.no_grad():
        return token_nll(model, answer_tokens(last_hidden(model, batch["input_ids"], batch["attention_mask"]),
                                              batch["labels"]))


def trained_lora(tiny, steps=3, method="npo"):
    tok, enc, base_dir = tiny
    eff = EfficiencyConfig(lora_rank=4, lora_alpha=8)
    model, reference, handle = build_unlearn_model(lambda: load(base_dir), eff, get_method(method).needs_reference)
    cfg = TrainConfig(steps=steps, forget_batch_size=4, retain_batch_size=4, lr=5e-2)
    unlearner = Unlearner(model, get_method(method), NPOParams(), cfg, enc["forget"], enc["retain"],
                          tok.pad_token_id, reference=reference)
    unlearner.run()
    return model, handle, unlearner


def test_only_adapters_train_and_outputs_change(tiny):
    tok, enc, base_dir = tiny
    model, handle, _ = trained_lora(tiny)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = load(base_dir)
    frozen = {n.replace(".base_layer", ""): p for n, p in model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters())  # base weights untouched
    assert not torch.allclose(nll(model, enc["forget"], tok.pad_token_id), nll(base, enc["forget"], tok.pad_token_id))


def test_reference_via_disabled_adapter_equals_the_base_model(tiny):
    tok, enc, base_dir = tiny
    model, handle, unlearner = trained_lora(tiny)
    base = load(base_dir)
    assert unlearner.reference == handle.reference  # no second model was loaded
    expected = nll(base, enc["forget"][:4], tok.pad_token_id)
    torch.testing.assert_close(unlearner.reference_nll(enc["forget"][:4]), expected, rtol=1e-5, atol=1e-5)
    # and the adapter is back on afterwards
    assert not torch.allclose(nll(model, enc["forget"][:4], tok.pad_token_id), expected)


def test_no_reference_without_a_method_that_needs_one(tiny):
    _, _, base_dir = tiny
    loads = []

    def counting_load():
        loads.append(1)
        return load(base_dir)

    _, reference, _ = build_unlearn_model(counting_load, EfficiencyConfig(), needs_reference=False)
    assert reference is None and len(loads) == 1
    _, reference, _ = build_unlearn_model(counting_load, EfficiencyConfig(), needs_reference=True)
    assert isinstance(reference, torch.nn.Module) and len(loads) == 3
    _, reference, handle = build_unlearn_model(counting_load, EfficiencyConfig(lora_rank=2), needs_reference=True)
    assert reference == handle.reference and len(loads) == 4


def test_adapter_saved_and_reloaded_gives_the_same_outputs(tiny, tmp_path):
    tok, enc, base_dir = tiny
    model, handle, _ = trained_lora(tiny, method="grad_diff")
    save_unlearned(model, handle, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = load_adapter(load(base_dir), tmp_path / "adapter")
    model.eval()
    torch.testing.assert_close(nll(reloaded.model, enc["forget"], tok.pad_token_id),
                               nll(model, enc["forget"], tok.pad_token_id))


def test_merged_model_saved_gives_the_same_outputs(tiny, tmp_path):
    tok, enc, _ = tiny
    model, handle, _ = trained_lora(tiny, method="grad_diff")
    model.eval()
    before = nll(model, enc["forget"], tok.pad_token_id)
    save_unlearned(model, handle, tmp_path / "merged", merged=True)
    merged = load(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(nll(merged, enc["forget"], tok.pad_token_id), before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nll(model, enc["forget"], tok.pad_token_id), before)  # adapter still live


def test_unknown_target_module_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="LoRA targets qkv are not linear modules.*: down_proj, gate_proj, k_proj"):
        apply_lora(load(tiny[2]), rank=2, targets=["qkv"])
