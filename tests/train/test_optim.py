"""Model optimisers: torch AdamW and bitsandbytes 8-bit / paged 8-bit AdamW on CPU tensors."""

import warnings

import pytest
import torch

from atwu_fast.data.formatting import encode_qa
from atwu_fast.finetune.tiny import ModelConfig, build_tiny_llama, train_tokenizer
from atwu_fast.methods import get_method
from atwu_fast.methods.gradient_ascent import GradDiffParams
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate, tokenizer_corpus
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.optim import OPTIMIZERS, build_optimizer, state_bytes_per_param
from atwu_fast.train.trainer import Unlearner


def _regression(name: str, dtype=torch.float32, steps: int = 30) -> tuple[list[float], torch.optim.Optimizer]:
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    w_true = torch.randn(64, 128)
    y = x @ w_true
    w = torch.nn.Parameter(torch.zeros(64, 128, dtype=dtype))  # 8192 elements: quantised states
    b = torch.nn.Parameter(torch.zeros(128, dtype=dtype))  # < 4096 elements: 32-bit states
    opt = build_optimizer([{"params": [w, b]}], name, lr=0.05)
    losses = []
    for _ in range(steps):
        loss = ((x @ w.float() + b.float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, opt


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_step_lowers_the_loss(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the paged CPU fallback warning is silenced, nothing else expected
        losses, _ = _regression(name)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_states_are_uint8_on_cpu(name):
    _, opt = _regression(name, steps=2)
    w, b = opt.param_groups[0]["params"]
    assert w.device.type == "cpu"
    assert opt.state[w]["state1"].dtype == torch.uint8 and opt.state[w]["state2"].dtype == torch.uint8
    assert opt.state[b]["state1"].dtype == torch.float32  # under min_8bit_size
    measured = sum(t.numel() * t.element_size() for t in opt.state[w].values()
                   if isinstance(t, torch.Tensor) and t.dim() > 0 and t.numel() != 256)  # minus the shared qmaps
    assert measured == state_bytes_per_param(name, w.numel(), 4)


def test_8bit_with_bf16_weights_lowers_the_loss():
    losses, _ = _regression("adamw_8bit", dtype=torch.bfloat16)
    assert losses[-1] < 0.5 * losses[0]


def test_8bit_tracks_fp32_adamw():
    fp32, _ = _regression("adamw")
    q8, _ = _regression("adamw_8bit")
    assert abs(q8[-1] - fp32[-1]) < 0.2 * fp32[0]


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], "sgd")


def test_unlearner_uses_the_8bit_optimizer():
    splits = generate(SyntheticConfig(n_forget_authors=2, n_retain_authors=2, n_holdout_authors=0, n_general=2))
    tok = train_tokenizer(tokenizer_corpus(splits), 400)
    enc = {k: [encode_qa(tok, r["question"], r["answer"], 64) for r in v] for k, v in splits.items()}
    model = build_tiny_llama(ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128), tok, 80)
    cfg = TrainConfig(steps=3, forget_batch_size=4, retain_batch_size=4, lr=1e-2)
    unlearner = Unlearner(model, get_method("grad_diff"), GradDiffParams(), cfg, enc["forget"], enc["retain"],
                          tok.pad_token_id, optim="adamw_8bit")
    import bitsandbytes as bnb

    assert isinstance(unlearner.optimizer, bnb.optim.AdamW8bit)
    before = model.get_output_embeddings().weight.detach().clone()
    unlearner.run()
    head = model.get_output_embeddings().weight
    assert not torch.equal(before, head.detach())
    assert unlearner.optimizer.state[head]["state1"].dtype == torch.uint8
