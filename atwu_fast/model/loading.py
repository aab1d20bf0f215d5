"""Loading models: a model directory or hub id with its tokenizer, and the options that decide GPU
memory: weights dtype, attention kernel, gradient checkpointing, LoRA (:mod:`.lora`).

* dtype: ``float32`` (4 bytes/param), ``bfloat16`` / ``float16`` (2 bytes/param).
* attention: ``auto`` asks the model class what it supports (transformers' ``_supports_flash_attn`` /
  ``_supports_sdpa`` flags; Gemma-2 has no SDPA, BLOOM neither SDPA nor FA2) and picks
  ``flash_attention_2`` when the class supports it, the ``flash_attn`` package is importable, the model
  runs on CUDA and its weights are bf16/fp16 (FA2's requirements), else ``sdpa`` (memory-efficient /
  flash SDPA kernels where torch has them) where the class supports it, else ``eager``. Asking for an
  implementation the model does not support, or ``flash_attention_2`` where it cannot run, is a
  one-line error, never a silent fallback.
* gradient checkpointing: each decoder layer is recomputed in backward (non-reentrant, so it also
  works with frozen embeddings under LoRA); activations drop from the layer's internals to its input.
* packing (:func:`atwu_fast.data.collate.pack_rows`): several rows concatenated into one sequence of
  their real tokens, with ``position_ids`` restarting at 0 for each row. transformers detects the row
  boundaries from the position ids: FlashAttention-2 runs varlen attention over them (no padding at
  all), SDPA/eager get a block-diagonal causal mask (same numbers, used on CPU and in tests).
"""

from __future__ import annotations

import importlib.util

import torch

from ..data.formatting import ensure_pad_token
from ..data.readers import DataError
from .probe import ModelCheckError, check_logit_transform

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}'; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def supported_attn_implementations(model) -> tuple[str, ...]:
    """The attention implementations ``model`` (a model, or its class) can run with, best first.

    From the class's own flags, as transformers checks them when it dispatches. A built model whose
    class cannot switch its attention after construction (transformers' ``_can_set_attn_implementation``)
    supports only the implementation it was built with.
    """
    cls = model if isinstance(model, type) else type(model)
    if not isinstance(model, type):
        can_set = getattr(cls, "_can_set_attn_implementation", None)
        current = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if can_set is not None and not can_set() and current in ATTENTION:
            return (current,)
    supported = []
    if getattr(model, "_supports_flash_attn", False) is True:
        supported.append("flash_attention_2")
    if getattr(model, "_supports_sdpa", False) is True:
        supported.append("sdpa")
    return (*supported, "eager")


def choose_attn_implementation(requested: str, device: str | torch.device, dtype: str | torch.dtype, model) -> str:
    """The attention implementation to run ``model`` (a model, or its class) with (see the module docstring)."""
    if requested not in ATTENTION:
        raise ValueError(f"unknown attention implementation '{requested}'; choose from {', '.join(ATTENTION)}")
    supported = supported_attn_implementations(model)
    name = (model if isinstance(model, type) else type(model)).__name__
    device_type = torch.device(device).type
    half = resolve_dtype(dtype) in (torch.bfloat16, torch.float16)
    fa2_ok = flash_attn_installed() and device_type == "cuda" and half
    if requested == "auto":
        return next(a for a in supported if a != "flash_attention_2" or fa2_ok)
    if requested not in supported:
        raise ModelCheckError(f"{name} does not support attn_implementation={requested}; it supports "
                           f"{', '.join(supported)} (or auto)")
    if requested == "flash_attention_2" and not fa2_ok:
        why = ("the flash-attn package is not installed (pip install 'atwu-fast[flash]')" if not flash_attn_installed()
               else "it needs a CUDA device" if device_type != "cuda" else "it needs bfloat16 or float16 weights")
        raise ModelCheckError(f"attn_implementation=flash_attention_2 is unavailable: {why}; use "
                           f"{' or '.join(a for a in supported if a != 'flash_attention_2')} or auto")
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

    Returns the model (modified in place).
    """
    torch_dtype = resolve_dtype(dtype)
    device = device if device is not None else next(model.parameters()).device
    attn = choose_attn_implementation(attn_implementation, device, torch_dtype, model)
    model.to(dtype=torch_dtype)
    if getattr(model.config, "_attn_implementation", None) != attn:
        model.set_attn_implementation(attn)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def quiet_libraries() -> None:
    """No per-file progress bars or info logs from transformers' weight loading / saving."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def resolve_device(name: str) -> torch.device:
    """``auto``: this process's CUDA device (a distributed rank's own GPU), else the CPU."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def uses_cuda(name: str) -> bool:
    """Whether the device name puts the model on a GPU (NCCL for a distributed run)."""
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """A tokenizer (directory or hub id) with a pad token distinct from eos (see :func:`load_pretrained`)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DataError(f"could not load the tokenizer of '{name}': {str(exc).splitlines()[0]}") from None
    ensure_pad_token(tokenizer)
    return tokenizer


def grow_embeddings_for(model, token_id: int) -> bool:
    """Give ``model`` an embedding row for ``token_id`` when it has none (grow only, never shrink: the
    checkpoint's rows and LM head are kept). Returns True when the embeddings were resized."""
    rows = model.get_input_embeddings().weight.shape[0]
    if token_id < rows:
        return False
    model.resize_token_embeddings(token_id + 1)
    return True


def load_pretrained(name: str, tokenizer_name: str = "", dtype: str = "float32", device: str = "auto",
                    trust_remote_code: bool = False):
    """Model and tokenizer from a directory or hub id (remote code only when trusted), in eval mode on
    ``device``; the tokenizer gets a pad token distinct from eos (unk, or an added one).

    The checkpoint's vocabulary (embedding rows, ``config.vocab_size``) is kept: many checkpoints have
    more rows than their tokenizer has tokens (Pythia, Phi-2, Qwen2.5), and an added pad token takes
    one of the spare ids. Only where there is no spare row do the embeddings grow (never shrink), by
    just enough for the pad id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise DataError(f"could not load model '{name}': {str(exc).splitlines()[0]}") from None
    if ensure_pad_token(tokenizer):
        grow_embeddings_for(model, tokenizer.pad_token_id)
    model.to(resolve_device(device))
    model.eval()
    check_logit_transform(model)  # never train or evaluate on a loss that is not the model's own
    return model, tokenizer


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
