"""Model loading options that decide GPU memory: weights dtype, attention kernel, gradient
checkpointing, and padding-free packing of variable-length rows.

* dtype: ``float32`` (4 bytes/param), ``bfloat16`` / ``float16`` (2 bytes/param).
* attention: ``auto`` picks ``flash_attention_2`` when the ``flash_attn`` package is importable,
  the model runs on CUDA and its weights are bf16/fp16 (FA2's requirements), else ``sdpa`` (memory-
  efficient / flash SDPA kernels where torch has them). Asking for ``flash_attention_2`` where it
  cannot run is a one-line error, never a silent fallback.
* gradient checkpointing: each decoder layer is recomputed in backward (non-reentrant, so it also
  works with frozen embeddings under LoRA); activations drop from the layer's internals to its input.
* packing (:func:`pack_rows`): several rows concatenated into one sequence of their real tokens,
  with ``position_ids`` restarting at 0 for each row. transformers detects the row boundaries from
  the position ids: FlashAttention-2 runs varlen attention over them (no padding at all), SDPA/eager
  get a block-diagonal causal mask (same numbers, used on CPU and in tests).
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")
IGNORE_INDEX = -100


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}'; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_attn_implementation(requested: str, device: str | torch.device, dtype: str | torch.dtype) -> str:
    """The attention implementation to load a model with (see the module docstring)."""
    if requested not in ATTENTION:
        raise ValueError(f"unknown attention implementation '{requested}'; choose from {', '.join(ATTENTION)}")
    device_type = torch.device(device).type
    half = resolve_dtype(dtype) in (torch.bfloat16, torch.float16)
    fa2_ok = flash_attn_installed() and device_type == "cuda" and half
    if requested == "auto":
        return "flash_attention_2" if fa2_ok else "sdpa"
    if requested == "flash_attention_2" and not fa2_ok:
        why = ("the flash-attn package is not installed (pip install 'atwu-fast[flash]')" if not flash_attn_installed()
               else "it needs a CUDA device" if device_type != "cuda" else "it needs bfloat16 or float16 weights")
        raise RuntimeError(f"attn_implementation=flash_attention_2 is unavailable: {why}; use sdpa or auto")
    return requested


def enable_gradient_checkpointing(model) -> None:
    """Recompute decoder layers in backward (non-reentrant: frozen inputs under LoRA are fine)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False


def apply_memory_options(model, dtype: str | torch.dtype = "float32", attn_implementation: str = "auto",
                         gradient_checkpointing: bool = False, device: str | torch.device | None = None):
    """Cast ``model`` to ``dtype``, select its attention kernel and (optionally) enable checkpointing.

    Returns the model (modified in place). Use on an already-built model (the embedded runs); use
    :func:`load_model` to load a checkpoint directly in the right dtype.
    """
    torch_dtype = resolve_dtype(dtype)
    device = device if device is not None else next(model.parameters()).device
    attn = choose_attn_implementation(attn_implementation, device, torch_dtype)
    model.to(dtype=torch_dtype)
    if getattr(model.config, "_attn_implementation", None) != attn:
        model.set_attn_implementation(attn)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def load_model(path: str, dtype: str | torch.dtype = "float32", attn_implementation: str = "auto",
               gradient_checkpointing: bool = False, device: str | torch.device = "cpu"):
    """``AutoModelForCausalLM.from_pretrained`` with the memory options applied, on ``device``."""
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    attn = choose_attn_implementation(attn_implementation, device, torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn)
    model.to(device)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.eval()
    return model


# --------------------------------------------------------------------------- padding-free packing


def pack_rows(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate encoded rows (``input_ids``, ``labels``) into one ``[1, ΣT_i]`` sequence.

    ``position_ids`` restart at 0 on every row (the boundary marker transformers reads); the label of
    each row's first token is set to −100 so that no token is predicted across a boundary.
    ``seq`` / ``offsets`` give each packed token's row and each row's start.
    """
    ids, labels, positions, seq, offsets, kinds = [], [], [], [], [], []
    start = 0
    for i, row in enumerate(rows):
        row_ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
        row_labels = torch.as_tensor(row.get("labels", [IGNORE_INDEX] * len(row_ids)), dtype=torch.long).clone()
        row_labels[0] = IGNORE_INDEX
        ids.append(row_ids)
        labels.append(row_labels)
        positions.append(torch.arange(len(row_ids)))
        seq.append(torch.full((len(row_ids),), i, dtype=torch.long))
        if "span_kind" in row:
            kinds.append(torch.as_tensor(row["span_kind"], dtype=torch.long))
        offsets.append(start)
        start += len(row_ids)
    packed = {"input_ids": torch.cat(ids)[None], "labels": torch.cat(labels)[None],
              "position_ids": torch.cat(positions)[None], "seq": torch.cat(seq), "offsets": torch.tensor(offsets)}
    if kinds:
        packed["span_kind"] = torch.cat(kinds)[None]
    return packed


def packed_last_hidden(model, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[1, ΣT_i, D]`` last hidden states of a packed batch (no attention mask: boundaries come
    from ``position_ids``)."""
    from .model import decoder

    return decoder(model)(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                          use_cache=False).last_hidden_state


@contextmanager
def eval_mode(model):
    """Temporarily in eval mode (no dropout), restoring the previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- the unlearned model


def build_unlearn_model(load, eff, needs_reference: bool):
    """The model to unlearn, its reference and the LoRA handle, per an ``EfficiencyConfig``.

    ``load()`` returns a fresh copy of the target model. Without LoRA the reference is a second copy,
    loaded only when the method uses one (NPO); with LoRA it is the adapter-disabled base of the same
    weights (``handle.reference``), so no second copy exists. Returns ``(model, reference, handle)``.
    """
    def prepared(gradient_checkpointing: bool):
        return apply_memory_options(load(), eff.dtype, eff.attn_implementation, gradient_checkpointing)

    model = prepared(eff.gradient_checkpointing)
    if eff.lora_rank > 0:
        from .lora import apply_lora

        handle = apply_lora(model, eff.lora_rank, eff.lora_alpha, eff.lora_dropout, eff.lora_targets)
        return handle.model, (handle.reference if needs_reference else None), handle
    reference = prepared(False).requires_grad_(False) if needs_reference else None
    return model, reference, None


def save_unlearned(model, handle, directory, merged: bool = False, state_dict: dict | None = None) -> None:
    """Save the full model, or with LoRA the adapter (``merged``: the merged model). ``state_dict``:
    the whole weights when ``model`` holds only this rank's shards (FSDP)."""
    if handle is not None:
        handle.save(directory, merged=merged)
    else:
        model.save_pretrained(directory, state_dict=state_dict)
