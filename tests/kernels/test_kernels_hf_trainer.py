"""Two steps of ``transformers.Trainer`` with per-token weights through atwu_kernels.hf."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from atwu_kernels.hf import WeightedLossTrainer  # noqa: E402

VOCAB = 61


def _reference_weighted_loss(model, inputs):
    """Float64 materialised logits, weighted token mean over shifted labels."""
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.double()
        labels, weights = inputs["labels"][:, 1:], inputs["token_weights"][:, 1:].double()
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), labels.reshape(-1), reduction="none", ignore_index=-100
        )
        valid = (labels.reshape(-1) != -100).double()
        w = weights.reshape(-1) * valid
        return (nll * w).sum() / w.sum(), (nll * valid).sum() / valid.sum()


class _RecordingTrainer(WeightedLossTrainer):
    records: list

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.records.append((loss.detach().double(), *_reference_weighted_loss(model, inputs)))
        return loss


def test_trainer_two_steps_with_token_weights(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config)
    rows = []
    for _ in range(4):
        ids = torch.randint(0, VOCAB, (10,))
        labels = ids.clone()
        labels[:3] = -100
        rows.append(
            dict(
                input_ids=ids,
                attention_mask=torch.ones(10, dtype=torch.long),
                labels=labels,
                token_weights=torch.rand(10) * 3,
            )
        )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = _RecordingTrainer(model=model, args=args, train_dataset=rows)
    trainer.records = []
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert len(trainer.records) == 2
    for fused, weighted, unweighted in trainer.records:
        torch.testing.assert_close(fused, weighted, rtol=1e-5, atol=1e-6)
        assert abs(weighted - unweighted) > 1e-4  # the weights matter for these batches
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
