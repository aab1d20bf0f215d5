"""LoRA through peft: wrap a causal LM, train only the adapters, use the adapter-disabled base as the
reference model, save the adapter or the merged model.

The trainer works on ``handle.model`` — the original ``*ForCausalLM`` with LoRA layers injected in
place — so :func:`atwu_fast.model.decoder` / ``lm_head`` see the usual module tree; the
:class:`peft.PeftModel` (``handle.peft``) is kept for ``disable_adapter``, saving and merging.

Reference without a second copy: inside ``peft.disable_adapter()`` every LoRA layer returns its
frozen base layer's output, so the same weights compute the base (pre-unlearning) model. The
trainer gets ``reference=handle.reference`` (a zero-argument context-manager factory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise RuntimeError("LoRA needs peft: pip install peft") from exc
    return peft


@dataclass
class LoraHandle:
    peft: object  # peft.PeftModel
    model: torch.nn.Module  # the wrapped *ForCausalLM (LoRA layers injected), what the trainer trains

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The base model (adapters bypassed), in eval mode; restores the adapters and the mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.peft.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def save(self, directory: str | Path, merged: bool = False) -> None:
        """Write the adapter (``adapter_config.json`` + ``adapter_model.safetensors``), or with
        ``merged`` the base weights with ``W + (alpha/r)·B·A`` folded in as a plain transformers model.
        Merging is done on a copy, so training and evaluation can continue with the adapter."""
        directory = Path(directory)
        if not merged:
            self.peft.save_pretrained(directory)
            return
        import copy

        merged_model = copy.deepcopy(self.peft).merge_and_unload()
        merged_model.save_pretrained(directory)


def decoder_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The text decoder's list of blocks and its full name (``model.layers``, ``transformer.h``,
    ``model.decoder.layers``, ``model.language_model.layers`` in a multimodal model, ...): the
    longest ``ModuleList`` child of ``model.get_decoder()``, found in the module tree, not by name."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    lists = [] if decoder is None else [(n, m) for n, m in decoder.named_children() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__} (no get_decoder() with a list of layers)")
    child, blocks = max(lists, key=lambda item: len(item[1]))
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    return (f"{prefix}.{child}" if prefix else child), blocks


def peft_accepts(model: torch.nn.Module) -> Callable[[str], bool]:
    """Whether peft's LoRA accepts a module name in this model: peft refuses some per architecture
    (a Mamba mixer's ``out_proj`` / ``conv1d`` in Falcon-H1); asked of peft itself where it says."""
    peft = _peft()
    check = getattr(getattr(peft.tuners, "tuners_utils", None), "_check_lora_target_modules_mamba", None)
    if check is None:
        return lambda name: True
    config = peft.LoraConfig(r=1, target_modules=["_"])

    def accepts(name: str) -> bool:
        try:
            check(config, model, name.rsplit(".", 1)[-1])
        except ValueError:
            return False
        return True

    return accepts


def linear_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Full name -> module of every Linear (subclasses included, e.g. Falcon's) / Conv1D inside the
    decoder blocks that peft's LoRA accepts: what LoRA can adapt."""
    prefix, blocks = decoder_blocks(model)
    accepts = peft_accepts(model)
    found = {f"{prefix}.{name}": module for name, module in blocks.named_modules()
             if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"}
    return {name: module for name, module in found.items() if accepts(name)}


def adapted_modules(model: torch.nn.Module, targets: Sequence[str] = ()) -> dict[str, torch.nn.Module]:
    """The decoder blocks' Linear / Conv1D modules LoRA adapts: every one (``targets`` empty, the default:
    the same rule for every family, e.g. Llama's q/k/v/o/gate/up/down_proj, GPT-2's c_attn/c_proj/c_fc,
    Falcon's query_key_value/dense/dense_h_to_4h/dense_4h_to_h), or those whose name ends with one of
    ``targets``. A target that matches none is a one-line error listing the names there are."""
    linears = linear_modules(model)
    if not targets:
        return linears
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in linears})
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in linears)]
    if missing:
        raise ValueError(f"LoRA targets {', '.join(missing)} are not linear modules of the decoder blocks of "
                         f"{type(model).__name__}; its linear modules are: {', '.join(suffixes)}")
    return {name: m for name, m in linears.items() if any(name == t or name.endswith("." + t) for t in targets)}


def peft_target_names(model: torch.nn.Module, modules: dict[str, torch.nn.Module]) -> list[str]:
    """The ``target_modules`` to give peft for exactly ``modules``: their short names (``q_proj``, ...)
    where these match no other module of the model (what ``adapter_config.json`` then shows), else
    their full names (e.g. a multimodal model whose vision tower has ``q_proj`` too)."""
    short = sorted({name.rsplit(".", 1)[-1] for name in modules})
    matched = {name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in short}
    return short if matched == set(modules) else sorted(modules)


def apply_lora(model: torch.nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: Sequence[str] = ()) -> LoraHandle:
    """Freeze ``model`` and add LoRA adapters (rank ``rank``, scaling ``alpha / rank``) to the modules
    :func:`adapted_modules` picks for ``targets`` (default: every linear layer of the decoder blocks)."""
    peft = _peft()
    modules = adapted_modules(model, targets)
    conv1d = any(type(m).__name__ == "Conv1D" for m in modules.values())  # GPT-2's [in, out] weights
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules=peft_target_names(model, modules),
                             bias="none", task_type="CAUSAL_LM", fan_in_fan_out=conv1d)
    wrapped = peft.get_peft_model(model, config)
    return LoraHandle(peft=wrapped, model=wrapped.get_base_model())


def load_adapter(model: torch.nn.Module, directory: str | Path, trainable: bool = False) -> LoraHandle:
    """Attach a saved adapter to a freshly loaded base ``model``."""
    peft = _peft()
    wrapped = peft.PeftModel.from_pretrained(model, str(directory), is_trainable=trainable)
    return LoraHandle(peft=wrapped, model=wrapped.get_base_model())
