"""Every family's per-token NLL and parameter gradients through each of the engine's loss paths (token
NLL, weighted cross-entropy, the fused ATWU head, the ``atwu_kernels.hf`` Trainer loss) equal those of
the model's own ``logits`` (transformers' forward), on tiny random models whose LM head is wide enough
that each family's softcap / scale / multiplier changes the loss.

Tolerances (fp32): a per-token NLL differs by fp32 rounding of the head GEMM and the logsumexp, bounded
in :func:`atwu_fast.model.probe.tolerance` (≈4·(1+√D)·ε₃₂·(1+max|t|), ~1e-4 here). A parameter gradient
is a sum over ~40 tokens × 384 vocabulary entries whose terms each carry relative error ~ε₃₂ in two
different summation orders: relative 1e-4, and 1e-5 of the model's largest gradient entry for entries
whose terms cancel (a key bias's gradient is exactly 0 in exact arithmetic: only rounding is left).
"""

from __future__ import annotations

import model_zoo as zoo
import pytest
import torch
import torch.nn.functional as F

from atwu_fast.model.probe import check_logit_transform, loss_mismatch, tolerance
from atwu_fast.model.tokens import answer_tokens, last_hidden, lm_head, logit_transform
from atwu_kernels import atwu_head, linear_token_nll, weighted_linear_cross_entropy
from atwu_kernels.hf import compute_weighted_causal_lm_loss

FAMILIES = list(zoo.FAMILIES)


def model_nll(model, batch) -> torch.Tensor:
    """[B, T-1] per-token NLL of the model's own logits (0 where the label is ignored)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none", ignore_index=-100)


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got: dict, want: dict, family: str) -> None:
    assert got.keys() == want.keys(), family
    scale = max(g.abs().max().item() for g in want.values())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, k=k: f"{family} grad {k}: {m}")


def engine_tokens(model, batch):
    return answer_tokens(last_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def test_token_nll_and_gradients_are_the_models_own(family):
    model = zoo.build(family)
    batch = zoo.random_batch()
    valid = batch["labels"][:, 1:] != -100
    expected = model_nll(model, batch)
    want = grads(model, expected.sum())
    tokens = engine_tokens(model, batch)
    weight, bias = lm_head(model)
    nll = linear_token_nll(tokens.hidden_pred, weight, tokens.targets, bias=bias, chunk_size=16,
                           **logit_transform(model))
    got = grads(model, nll.sum())
    max_logit = 4 * zoo.HEAD_STD * 4  # |t| stays below ~4 sigma of a logit
    torch.testing.assert_close(nll.detach(), expected.detach()[valid], rtol=0, atol=tolerance(model, max_logit))
    assert_same_grads(got, want, family)


def test_weighted_cross_entropy_and_hf_trainer_loss_are_the_models_own(family):
    model = zoo.build(family)
    batch = zoo.random_batch()
    labels = batch["labels"]
    weights = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3))
    valid = labels[:, 1:] != -100
    w = weights[:, 1:] * valid
    expected = (model_nll(model, batch) * w).sum() / w.sum()
    want = grads(model, expected)

    tokens = engine_tokens(model, batch)
    weight, bias = lm_head(model)
    loss = weighted_linear_cross_entropy(tokens.hidden_pred, weight, tokens.targets, weights[:, 1:][valid],
                                         bias=bias, chunk_size=16, **logit_transform(model))
    got = grads(model, loss)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    assert_same_grads(got, want, family)

    hf_loss = compute_weighted_causal_lm_loss(model, batch["input_ids"], labels, weights,
                                              attention_mask=batch["attention_mask"])
    got = grads(model, hf_loss)
    torch.testing.assert_close(hf_loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    assert_same_grads(got, want, family)


def test_atwu_head_loss_and_gradients_are_the_models_own(family):
    """L = α·Σ_R ℓ/N_R − γ·Σ_F g·p^(βg)·ℓ/N_F with the saturation p^(βg) (p = e^(−ℓ)) and the scores g
    held fixed, so dL/dθ is a weighted sum of the tokens' dℓ/dθ (see atwu_kernels.head)."""
    alpha, gamma, beta = 1.0, 0.7, 2.0
    model = zoo.build(family)
    batch = zoo.random_batch()
    labels = batch["labels"]
    valid = labels[:, 1:] != -100
    is_forget = torch.tensor([True, False, True])[:, None].expand_as(valid)
    tokens = engine_tokens(model, batch)
    d = tokens.hidden_pred.shape[1]
    sw = torch.randn(d, generator=torch.Generator().manual_seed(4)) * 0.3
    sb = torch.tensor(0.1)

    nll = model_nll(model, batch)[valid]
    forget = is_forget[valid]
    g = torch.sigmoid(tokens.hidden_pred.detach() @ sw + sb)
    coeff = torch.where(forget, -gamma * g * torch.exp(-nll.detach() * beta * g) / forget.sum(),
                        torch.full_like(g, alpha) / (~forget).sum())
    want = grads(model, (coeff * nll).sum())
    expected_loss = (coeff * nll).sum().detach()

    tokens = engine_tokens(model, batch)
    weight, bias = lm_head(model)
    out = atwu_head(tokens.hidden_pred, weight, tokens.targets, forget, sw, sb, alpha=alpha, gamma=gamma, beta=beta,
                    bias=bias, chunk_size=16, **logit_transform(model))
    got = grads(model, out.loss)
    torch.testing.assert_close(out.loss.detach(), expected_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.nll, nll.detach(), rtol=0, atol=tolerance(model, 4 * zoo.HEAD_STD * 4))
    assert_same_grads(got, want, family)


def test_the_transform_matters_where_the_family_has_one(family):
    """Without its transform the loss would be another number: the checks above could catch its absence."""
    model = zoo.build(family)
    batch = zoo.random_batch()
    tokens = engine_tokens(model, batch)
    weight, bias = lm_head(model)
    with torch.no_grad():
        plain = linear_token_nll(tokens.hidden_pred, weight, tokens.targets, bias=bias)
        own = model_nll(model, batch)[batch["labels"][:, 1:] != -100]
    differs = (plain - own).abs().max().item() > 0.1
    assert differs == (family not in zoo.PLAIN), family


def test_load_time_probe_passes_in_float32_and_bfloat16(family):
    model = zoo.build(family)
    check_logit_transform(model)
    model.to(torch.bfloat16)
    diff, tol = loss_mismatch(model)
    assert diff <= tol, (family, diff, tol)
    check_logit_transform(model)
