"""``transformers.Trainer`` with per-token weights through atwu_kernels.hf: fp32, fp32 weights with
``bf16=True`` (autocast), and bf16 weights — each checked against a float64 reference of the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from helpers import IGNORE, assert_within, bf16_gemm_bounds, bf16_round64  # noqa: E402

import atwu_kernels.hf as hf  # noqa: E402
from atwu_kernels.hf import WeightedLossTrainer, compute_weighted_causal_lm_loss  # noqa: E402

VOCAB = 61


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        initializer_range=0.3,  # spread the token losses, so that the weights change the loss
    )
    return transformers.LlamaForCausalLM(config).to(dtype)


def _rows(n=4, length=10):
    gen = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (length,), generator=gen)
        labels = ids.clone()
        labels[:3] = -100
        rows.append(
            dict(
                input_ids=ids,
                attention_mask=torch.ones(length, dtype=torch.long),
                labels=labels,
                token_weights=(torch.rand(length, generator=gen) < 0.3) * 3.0 + 0.01,  # a few tokens count
            )
        )
    return rows


class _Spy:
    """Wraps the head call of the drop-in: records its inputs, the autocast state and its loss."""

    def __init__(self, monkeypatch):
        self.records = []
        inner = hf.weighted_linear_cross_entropy

        def spy(hidden, weight, labels, weights, **kw):
            loss = inner(hidden, weight, labels, weights, **kw)
            amp = torch.is_autocast_enabled("cpu")
            self.records.append((hidden.detach().clone(), weight.detach().clone(), labels, weights, loss.detach(), amp))
            return loss

        monkeypatch.setattr(hf, "weighted_linear_cross_entropy", spy)


def _check_record(record, low_precision_operands):
    """The recorded loss vs float64 on the operands the GEMMs saw (bf16-rounded under autocast)."""
    hidden, weight, labels, weights, loss, _ = record
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    valid = y != IGNORE
    w_valid = weights.reshape(-1).double() * valid
    coeff = w_valid / w_valid.sum()
    if low_precision_operands:
        h64, w64 = bf16_round64(h), bf16_round64(weight)
        bound = (coeff * bf16_gemm_bounds(h64, w64, None, y, coeff)["nll"]).sum()
    else:
        h64, w64 = h.double(), weight.double()
        bound = 1e-5 * (1 + F.cross_entropy(h64 @ w64.t(), y, ignore_index=IGNORE).abs())  # fp32 arithmetic
    nll = F.cross_entropy(h64 @ w64.t(), y, reduction="none", ignore_index=IGNORE)
    expected = (coeff * nll).sum()
    assert_within(loss, expected, bound, "weighted loss")
    unweighted = (nll * valid).sum() / valid.sum()
    assert abs(expected - unweighted) > 2 * bound  # an unweighted loss would fail the check above


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(dict(weights=torch.float32, bf16=False), id="fp32"),
        pytest.param(dict(weights=torch.float32, bf16=True), id="fp32-weights-bf16-autocast"),
        pytest.param(dict(weights=torch.bfloat16, bf16=False), id="bf16-weights"),
    ],
)
def test_trainer_two_steps_with_token_weights(tmp_path, monkeypatch, case):
    model = _model(case["weights"])
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=case["bf16"],
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        logging_strategy="no",
        disable_tqdm=True,
    )
    spy = _Spy(monkeypatch)
    trainer = WeightedLossTrainer(model=model, args=args, train_dataset=_rows())
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert len(spy.records) == 2
    low_precision = case["bf16"] or case["weights"] == torch.bfloat16
    for record in spy.records:
        assert record[5] == case["bf16"]  # autocast is on exactly when bf16=True asks for it
        _check_record(record, low_precision)
    assert all(p.dtype == case["weights"] for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
def test_drop_in_backward_inside_or_outside_autocast(monkeypatch, weights):
    """Forward under autocast; backward inside it or after it gives the same gradients, in the
    parameters' dtype, and the loss matches the reference."""
    rows = _rows(2)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    grads = []
    for inside in (True, False):
        model = _model(weights)
        spy = _Spy(monkeypatch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compute_weighted_causal_lm_loss(
                model,
                batch["input_ids"],
                batch["labels"],
                batch["token_weights"],
                attention_mask=batch["attention_mask"],
            )
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        _check_record(spy.records[0], low_precision_operands=True)
        grads.append({k: p.grad for k, p in model.named_parameters()})
        assert all(g is not None and g.dtype == weights and torch.isfinite(g).all() for g in grads[-1].values())
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
