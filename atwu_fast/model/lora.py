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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


def apply_lora(model: torch.nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_TARGETS) -> LoraHandle:
    """Freeze ``model`` and add LoRA adapters (rank ``rank``, scaling ``alpha / rank``) to ``targets``."""
    peft = _peft()
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"LoRA target modules not in the model: {', '.join(missing)}")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                             bias="none", task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, config)
    return LoraHandle(peft=wrapped, model=wrapped.get_base_model())


def load_adapter(model: torch.nn.Module, directory: str | Path, trainable: bool = False) -> LoraHandle:
    """Attach a saved adapter to a freshly loaded base ``model``."""
    peft = _peft()
    wrapped = peft.PeftModel.from_pretrained(model, str(directory), is_trainable=trainable)
    return LoraHandle(peft=wrapped, model=wrapped.get_base_model())
