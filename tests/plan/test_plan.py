"""The memory planner: exact parameter counts from configs on the meta device (every family of the
model zoo, LoRA adapters as peft creates them), activation formulas checked against what autograd
really saves, and the two acceptance cases."""

import json
import warnings
from pathlib import Path

import model_zoo
import peft
import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from atwu_fast.model.lora import adapted_modules
from atwu_fast.plan.__main__ import main
from atwu_fast.plan.planner import GIB, PlanInput, _layer_activations, architecture, plan, saved_tensor_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "atwu_fast" / "plan" / "configs"
LLAMA_8B, LLAMA_1B = str(CONFIGS / "llama-3.1-8b"), str(CONFIGS / "llama-3.2-1b")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_parameter_counts_are_exact_from_the_config():
    p8 = plan(PlanInput(model=LLAMA_8B))
    assert p8.params["total"] == 8_030_261_248  # Llama-3.1-8B, untied
    p1 = plan(PlanInput(model=LLAMA_1B))
    assert p1.params["total"] == 1_235_814_400  # Llama-3.2-1B, tied embeddings counted once
    a = p1.architecture
    assert (a["hidden_size"], a["layers"], a["heads"], a["kv_heads"], a["intermediate_size"], a["vocab_size"],
            a["tied_embeddings"]) == (2048, 16, 32, 8, 8192, 128256, True)


def test_lora_parameter_count_matches_peft():
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    p = plan(PlanInput(model="tiny", lora_rank=4), config=cfg)
    model = peft.get_peft_model(LlamaForCausalLM(cfg), peft.LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    assert p.params["trainable"] == sum(t.numel() for t in model.parameters() if t.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lora", [False, True])
def test_activation_formula_matches_saved_tensors(dtype, lora):
    """Per-layer saved bytes (difference between a 2- and a 1-layer model) against the formula."""
    measured = []
    for layers in (1, 2):
        cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=176, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=4, attn_implementation="sdpa")
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(dtype).train()
        if lora:
            model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=LLAMA_TARGETS)).get_base_model()
        ids = torch.randint(0, 97, (2, 24))
        nbytes, _ = saved_tensor_bytes(lambda m=model, i=ids: m.model(input_ids=i).last_hidden_state,
                                       exclude=list(model.parameters()))
        measured.append(nbytes)
    adapted = [(name, 176 if name == "down_proj" else 64) for name in LLAMA_TARGETS] if lora else None
    predicted = _layer_activations(architecture(cfg), 48, 2 if dtype == torch.bfloat16 else 4, adapted, 4, 4)
    assert predicted == pytest.approx(measured[1] - measured[0], rel=0.03)


def test_each_option_lowers_its_component():
    base = plan(PlanInput(model=LLAMA_1B, optim="adamw"))
    q8 = plan(PlanInput(model=LLAMA_1B, optim="adamw_8bit"))
    assert q8.components["optimizer_state"] < 0.55 * base.components["optimizer_state"]
    ckpt = plan(PlanInput(model=LLAMA_1B, gradient_checkpointing=True))
    assert ckpt.components["activations"] < 0.2 * base.components["activations"]
    lora = plan(PlanInput(model=LLAMA_1B, lora_rank=8))
    assert lora.components["gradients"] < 0.02 * base.components["gradients"]
    assert lora.components["loss_head"] < 0.2 * base.components["loss_head"]  # no fp32 dW of a frozen head
    npo = plan(PlanInput(model=LLAMA_1B, method="npo"))
    assert npo.components["reference_weights"] == npo.components["weights"]
    assert plan(PlanInput(model=LLAMA_1B, method="npo", lora_rank=8)).components["reference_weights"] == 0
    assert plan(PlanInput(model=LLAMA_1B, method="npo")).components["scorer"] == 0


def test_loss_head_is_a_chunk_not_n_by_v():
    small = plan(PlanInput(model=LLAMA_8B, lora_rank=8, batch=8, seq_len=512))
    big = plan(PlanInput(model=LLAMA_8B, lora_rank=8, batch=64, seq_len=512))
    n_by_v = 64 * 512 * 128256 * 2
    assert big.components["loss_head"] - small.components["loss_head"] < 0.05 * n_by_v


def test_acceptance_llama_8b_lora_8bit_checkpointing_fits_24gb():
    p = plan(PlanInput(model=LLAMA_8B, method="atwu", lora_rank=16, optim="adamw_8bit",
                       gradient_checkpointing=True, batch=8, seq_len=512, gpu_gb=24))
    assert p.fits and 15 * GIB < p.peak_bytes < 24 * GIB
    assert not plan(PlanInput(model=LLAMA_8B, optim="adamw_8bit", gradient_checkpointing=True, gpu_gb=24)).fits


def test_acceptance_llama_1b_full_8bit_fits_16gb():
    p = plan(PlanInput(model=LLAMA_1B, method="atwu", optim="adamw_8bit", batch=8, seq_len=512, gpu_gb=16))
    assert p.fits
    assert not plan(PlanInput(model=LLAMA_1B, optim="adamw", dtype="float32", gpu_gb=16)).fits


def test_cli_reports_components_and_exit_code(capsys):
    rc = main(["--model", LLAMA_8B, "--method", "atwu", "--lora", "16", "--optim", "adamw_8bit", "--checkpointing",
               "--seq-len", "512", "--batch", "8", "--gpu-gb", "24"])
    out = capsys.readouterr().out
    assert rc == 0 and "fits 24 GiB: yes" in out
    for label in ("weights", "gradients", "optimizer state", "activations, no checkpointing",
                  "activations, checkpointing", "loss head", "scorer"):
        assert label in out
    assert main(["--model", LLAMA_8B, "--gpu-gb", "24"]) == 1  # full fine-tuning of 8B does not fit
    capsys.readouterr()
    assert main(["--model", LLAMA_1B, "--json", "--optim", "adamw_8bit", "--gpu-gb", "16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is True and data["params"]["total"] == 1_235_814_400


def test_cli_bad_model_is_one_line_error(capsys, tmp_path):
    assert main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load a transformers config") and err.count("\n") == 1


def test_autoconfig_reads_the_committed_configs():
    assert AutoConfig.from_pretrained(LLAMA_8B).num_key_value_heads == 8


def test_several_gpus_ddp_buckets_and_fsdp_shards():
    base = dict(model=LLAMA_1B, method="atwu", optim="adamw", gradient_checkpointing=True)
    one = plan(PlanInput(**base))
    assert plan(PlanInput(**base, ranks=1, parallel="fsdp")).components == one.components  # one rank: nothing shards
    ddp = plan(PlanInput(**base, ranks=4, parallel="ddp"))
    assert ddp.components["ddp_buckets"] == one.components["gradients"]
    assert ddp.peak_bytes > one.peak_bytes
    f2, f4 = (plan(PlanInput(**base, ranks=k, parallel="fsdp")) for k in (2, 4))
    for key in ("weights", "gradients", "optimizer_state"):
        assert f4.components[key] == pytest.approx(one.components[key] / 4, abs=1)
        assert f2.components[key] == pytest.approx(2 * f4.components[key], abs=2)
    assert f2.components["fsdp_unsharded_params"] == f4.components["fsdp_unsharded_params"] > 0  # the working set
    assert one.peak_bytes > f2.peak_bytes > f4.peak_bytes


def test_fsdp_plan_for_llama_8b_full_fine_tuning():
    base = dict(model=LLAMA_8B, method="atwu", optim="adamw", gradient_checkpointing=True, gpu_gb=48)
    assert not plan(PlanInput(**base)).fits  # one 48 GB GPU: weights + grads + bf16 AdamW state alone ~ 60 GiB
    assert plan(PlanInput(**base, ranks=8, parallel="fsdp")).fits
    with pytest.raises(ValueError, match="full fine-tuning with adamw"):
        plan(PlanInput(**base, ranks=8, parallel="fsdp", lora_rank=16))


def _lora_parameters(model, rank: int) -> int:
    """The adapter parameters peft creates on ``model`` for the modules the planner adapts."""
    config = peft.LoraConfig(r=rank, target_modules=list(adapted_modules(model)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, config)
    return sum(p.numel() for name, p in wrapped.named_parameters() if "lora_" in name)


@pytest.mark.parametrize("family", list(model_zoo.FAMILIES))
def test_every_family_plans_with_exact_parameter_and_lora_counts(family):
    config = model_zoo.config(family)
    full = plan(PlanInput(model=family), config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = model_zoo.build(family)
    assert full.params["total"] == sum(p.numel() for p in real.parameters())  # tied matrices once
    a = full.architecture
    assert (a["layers"], a["vocab_size"], a["hidden_size"]) == (2, model_zoo.VOCAB, model_zoo.HIDDEN)
    assert a["tied_embeddings"] == (real.get_output_embeddings().weight is real.get_input_embeddings().weight)
    assert full.peak_bytes > 0 and all(v >= 0 for v in full.components.values())
    assert adapted_modules(real)  # every family has linears LoRA can adapt (Falcon's are Linear subclasses)
    lora = plan(PlanInput(model=family, lora_rank=4), config=config)
    created = _lora_parameters(real, 4)  # peft accepts every module selected (no Mamba out_proj in Falcon-H1)
    assert created > 0
    assert lora.params["lora"] == lora.params["trainable"] == created
    assert lora.components["activations"] > 0


def test_gpt2_conv1d_adapters_are_counted_transposed():
    """GPT-2's Conv1D weights are [in, out]: c_fc adapts 64 -> 256 (not 256 -> 64), per block."""
    config = model_zoo.config("gpt2")
    p = plan(PlanInput(model="gpt2", lora_rank=2, lora_targets=["c_fc"]), config=config)
    assert p.params["lora"] == 2 * 2 * (64 + 4 * 64)
    with pytest.raises(ValueError, match="c_attn, c_fc, c_proj"):
        plan(PlanInput(model="gpt2", lora_rank=2, lora_targets=["q_proj"]), config=config)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_cli_plans_a_saved_non_llama_config(family, tmp_path, capsys):
    config = model_zoo.config(family)
    config.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = model_zoo.build(family)
    total = sum(p.numel() for p in real.parameters())
    assert main(["--model", str(tmp_path), "--gpu-gb", "24"]) == 0
    out = capsys.readouterr().out
    assert "fits 24 GiB: yes" in out and "L=2 D=64" in out
    assert main(["--model", str(tmp_path), "--lora", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["total"] == total and data["inputs"]["lora_targets"] == []
    assert data["params"]["lora"] == _lora_parameters(real, 8)
    capsys.readouterr()
    assert main(["--model", str(tmp_path), "--lora", "8", "--lora-targets", "no_such_proj"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: LoRA targets no_such_proj") and err.count("\n") == 1
