"""The memory planner: exact parameter counts from configs on the meta device, activation formulas
checked against what autograd really saves, and the two acceptance cases."""

import json
from pathlib import Path

import peft
import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from atwu_fast.model.lora import DEFAULT_TARGETS
from atwu_fast.plan.__main__ import main
from atwu_fast.plan.planner import GIB, PlanInput, _layer_activations, architecture, plan, saved_tensor_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "atwu_fast" / "plan" / "configs"
LLAMA_8B, LLAMA_1B = str(CONFIGS / "llama-3.1-8b"), str(CONFIGS / "llama-3.2-1b")


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
    model = peft.get_peft_model(LlamaForCausalLM(cfg), peft.LoraConfig(r=4, target_modules=list(DEFAULT_TARGETS)))
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
            model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=list(DEFAULT_TARGETS))).get_base_model()
        ids = torch.randint(0, 97, (2, 24))
        nbytes, _ = saved_tensor_bytes(lambda m=model, i=ids: m.model(input_ids=i).last_hidden_state,
                                       exclude=list(model.parameters()))
        measured.append(nbytes)
    adapted = [(name, 176 if name == "down_proj" else 64) for name in DEFAULT_TARGETS] if lora else None
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
