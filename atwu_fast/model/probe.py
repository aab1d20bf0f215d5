"""Probes that the engine's view of a loaded model is the model's own, run once per loaded model on a
few random tokens (milliseconds), because new families keep arriving with new twists:

* **the loss** (:func:`check_logit_transform`): the engine never builds the model's logits; it takes the
  decoder's last hidden states and the LM head and applies the family's logit transform itself
  (:func:`atwu_kernels.families.model_logit_transform`). The probe compares that per-token NLL with
  cross-entropy of ``model(input_ids).logits``; a mismatch stops the run with one line naming the
  family and the difference — never a training run on a wrong loss.
* **packing** (:func:`exact_packing`): a packed sequence's rows are separated only by restarting
  ``position_ids``; some families ignore them (OPT's and BLOOM's masks, Falcon-H1's Mamba state), so a
  packed row would see its neighbour. The probe changes the neighbour's tokens and checks that the
  row's NLL does not move; where it does, training falls back to padded batches with one warning.

Loss tolerance. Both sides compute the same ``z = h·Wᵀ`` in the model's dtype (output rounded to it,
relative error ``ε``) with fp32 accumulation over ``D`` products (relative error ~``√D·ε₃₂``); a
per-token NLL ``lse(t) − t_y`` moves by at most twice the largest logit error, so the bound is
``4·(ε + √D·ε₃₂)·(1 + max|t|)``. A missing transform moves it far more: a scale s changes the NLL
by ~``|1−s|·max|t|``, a cap c at logit t by ``t − c·tanh(t/c)``.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from atwu_kernels.families import UnknownLogitTransform, model_logit_transform

from .tokens import answer_tokens, forward_answer_tokens, last_hidden, make_batch, model_device, token_nll

PROBE_ROWS, PROBE_LENGTH = 2, 16


class ModelCheckError(ValueError):
    """The engine's loss of this model would differ from the model's own: refuse to train on it."""


def family(model) -> str:
    config = getattr(model, "config", None)
    return f"'{getattr(config, 'model_type', '?')}' ({type(model).__name__})"


def probe_ids(model, rows: int = PROBE_ROWS, length: int = PROBE_LENGTH, seed: int = 0) -> torch.Tensor:
    """Random token ids the model can embed, on its device (the same on every rank: a seeded generator)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    device = model.get_input_embeddings().weight.device
    return torch.randint(0, vocab, (rows, length), generator=gen).to(device)


@contextmanager
def evaluating(model):
    """No dropout, no gradient; the model's mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def tolerance(model, max_logit: float) -> float:
    """The NLL bound of the module docstring for this model's dtype and hidden size."""
    weight = model.get_output_embeddings().weight
    eps, eps32 = torch.finfo(weight.dtype).eps, torch.finfo(torch.float32).eps
    return 4.0 * (eps + weight.shape[1] ** 0.5 * eps32) * (1.0 + max_logit)


def loss_mismatch(model) -> tuple[float, float]:
    """(largest |engine NLL − NLL of the model's logits| over the probe tokens, its tolerance)."""
    ids = probe_ids(model)
    labels = ids.clone()
    mask = torch.ones_like(ids)
    with evaluating(model):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   reduction="none")
        engine = token_nll(model, answer_tokens(last_hidden(model, ids, mask), labels)).float()
    diff = (engine - expected).abs().max().item()
    return diff, tolerance(model, logits.abs().max().item())


def check_logit_transform(model) -> None:
    """Raise :class:`ModelCheckError` (one line) unless the engine's per-token loss is the model's own."""
    try:
        model_logit_transform(model)
    except UnknownLogitTransform as exc:
        raise ModelCheckError(f"{exc}: the engine cannot compute this model's loss") from None
    diff, tol = loss_mismatch(model)
    if not diff <= tol:
        raise ModelCheckError(
            f"model family {family(model)}: the engine's per-token loss differs from the model's own logits by "
            f"up to {diff:.3g} nats (tolerance {tol:.2g}): its forward transforms the logits in a way the engine "
            "does not know, so it will not train on a wrong loss")


def packed_nll(model, first: list[int], second: list[int]) -> torch.Tensor:
    """NLL of ``second``'s tokens packed after ``first`` (its first label dropped: no prediction across a
    boundary; the same tokens a lone row predicts)."""
    rows = [{"input_ids": first, "labels": first}, {"input_ids": second, "labels": second}]
    tokens, _ = forward_answer_tokens(model, make_batch(rows, 0, model_device(model), packing=True))
    return token_nll(model, tokens)[tokens.seq == 1].float()


def packing_leak(model) -> tuple[float, float]:
    """(largest change of a packed row's NLL when its neighbour's tokens change, its tolerance).

    Where attention honours the boundary, the row's computation never reads the neighbour's values
    (masked scores give exact zeros; FlashAttention's varlen kernel never loads them), so the number
    is the same up to fp32 rounding whatever the dtype — every dense family here gives exactly 0. A
    leak moves it by the attention the row pays to foreign tokens: long neighbours make that visible.
    The tolerance is fp32 rounding, so a model with any doubt (an MoE whose expert batches change with
    the neighbour) is not packed: padding is always exact."""
    a, b = probe_ids(model, rows=2, length=4 * PROBE_LENGTH, seed=1).tolist()
    c = probe_ids(model, rows=1, length=PROBE_LENGTH // 2, seed=2)[0].tolist()
    with evaluating(model):
        after_a, after_b = packed_nll(model, a, c), packed_nll(model, b, c)
    eps32 = torch.finfo(torch.float32).eps
    return (after_a - after_b).abs().max().item(), 16 * eps32 * (1.0 + after_a.abs().max().item())


def exact_packing(model, requested: bool) -> bool:
    """Whether to pack: only where asked and the model's attention honours the row boundaries
    (:func:`packing_leak`); otherwise one warning and padded batches."""
    if not requested:
        return False
    leak, tol = packing_leak(model)
    if leak <= tol:
        return True
    attn = getattr(model.config, "_attn_implementation", "?")
    warnings.warn(f"packing disabled for model family {family(model)} with {attn} attention: a packed row's "
                  f"NLL moves by {leak:.2g} with its neighbour's tokens; training on padded batches instead",
                  stacklevel=2)
    return False
