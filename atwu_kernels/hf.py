"""Drop-in use with Hugging Face ``transformers``: causal-LM training with per-token weights.

Requires ``transformers`` (imported here only; the rest of ``atwu_kernels`` does not need it)::

    from atwu_kernels.hf import WeightedLossTrainer
    trainer = WeightedLossTrainer(model=model, args=TrainingArguments(..., remove_unused_columns=False),
                                  train_dataset=ds)   # rows: input_ids, labels, token_weights[, attention_mask]

``token_weights[b, t]`` weighs the loss of predicting ``labels[b, t]`` (same alignment as
``labels``; the usual one-position shift is applied here). The loss is the weighted token mean
``Σ w·ℓ / Σ_valid w`` computed by :func:`atwu_kernels.weighted_linear_cross_entropy`, so no
``[batch, seq, vocab]`` logits tensor is ever built.

Mixed precision: ``TrainingArguments(bf16=True)`` with fp32 weights makes Accelerate wrap
``model.forward`` in autocast; this loss calls the base model and the head itself, so
:meth:`WeightedLossTrainer.compute_loss` enters the same autocast (``accelerator.autocast()``).
The head then runs its GEMMs in bf16 and returns fp32 gradients for the fp32 weights.
"""

from __future__ import annotations

import torch
import transformers

from .families import model_logit_transform
from .ops import weighted_linear_cross_entropy


def compute_weighted_causal_lm_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    impl: str | None = None,
) -> torch.Tensor:
    """Weighted next-token loss of a ``*ForCausalLM`` model through its base model + LM head."""
    base = model.base_model  # LlamaModel, GPT2Model, ... (the decoder without the LM head)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    head = model.get_output_embeddings()
    weights = None if token_weights is None else token_weights[:, 1:]
    transform = model_logit_transform(model)  # softcap / scale / multiplier of the model's family
    return weighted_linear_cross_entropy(
        hidden[:, :-1],
        head.weight,
        labels[:, 1:],
        weights,
        bias=getattr(head, "bias", None),
        ignore_index=ignore_index,
        impl=impl,
        **transform.kwargs(),
    )


class WeightedLossTrainer(transformers.Trainer):
    """``Trainer`` whose loss is the per-token-weighted causal-LM loss (column ``token_weights``).

    Set ``remove_unused_columns=False`` so the ``token_weights`` column reaches ``compute_loss``.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.accelerator.autocast():  # what Accelerate applies to model.forward under bf16/fp16
            loss = compute_weighted_causal_lm_loss(
                model,
                inputs["input_ids"],
                inputs["labels"],
                inputs.get("token_weights"),
                attention_mask=inputs.get("attention_mask"),
            )
        return (loss, None) if return_outputs else loss
