"""Options of the unlearning loop and of fitting it on the hardware (the ``train`` and ``efficiency``
sections)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check, option


@dataclass
class TrainConfig:
    """The unlearning loop (shared by every method)."""

    lr: float = option("model AdamW learning rate", 1e-3)
    steps: int = option("optimiser steps", 60)
    forget_batch_size: int = option("forget QA pairs per micro-batch", 16)
    retain_batch_size: int = option("retain QA pairs per micro-batch", 16)
    grad_accum: int = option("micro-batches per optimiser step", 1)
    warmup_steps: int = option("linear warm-up steps", 0)
    lr_schedule: Literal["constant", "linear"] = option("after warm-up: constant or linear decay to 0", "constant")
    weight_decay: float = option("AdamW weight decay", 0.0)
    max_grad_norm: float = option("gradient-norm clip (0 disables)", 1.0)
    loss_chunk_size: int = option("tokens per chunk of the LM-head loss (bounds the chunk x V buffer)", 1024)
    fused_head: bool = option("ATWU through the fused head (NLL, scores, loss and gradients in one pass)", True)
    seed: int = option("seed of batching and any sampling during unlearning", 0)
    checkpoint_every: int = option("write a resumable checkpoint every K steps (0: only at the end)", 0)
    abort_grad_norm: float = option("stop the run if the gradient norm before clipping exceeds this (0: off)", 0.0)

    def validate(self) -> None:
        check(self.lr > 0, "train.lr must be > 0")
        check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        check(self.abort_grad_norm >= 0, "train.abort_grad_norm must be >= 0")
        check(self.steps >= 1, "train.steps must be >= 1")
        check(self.forget_batch_size >= 1 and self.retain_batch_size >= 1, "train batch sizes must be >= 1")
        check(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        check(self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0")
        check(self.loss_chunk_size >= 1, "train.loss_chunk_size must be >= 1")


@dataclass
class EfficiencyConfig:
    """Fitting one GPU: optimiser, LoRA, dtype, attention kernel, checkpointing (see docs/memory.md).

    ``python -m atwu_fast.plan`` predicts the peak GPU memory of a combination before a run.
    """

    optim: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = option(
        "model optimiser: torch AdamW, or bitsandbytes 8-bit AdamW (paged: CUDA unified memory); "
        "the ATWU scorer stays an fp32 SGD", "adamw")
    lora_rank: int = option("LoRA rank through peft (0: full fine-tuning)", 0)
    lora_alpha: float = option("LoRA alpha (scaling alpha / rank)", 16.0)
    lora_dropout: float = option("LoRA dropout", 0.0)
    lora_targets: list[str] = option("modules of the decoder blocks that get LoRA adapters (names or suffixes; "
                                     "empty: every Linear/Conv1D of the decoder blocks, for any family)",
                                     factory=list)
    save_merged: bool = option("with LoRA: save the merged model instead of the adapter", False)
    gradient_checkpointing: bool = option("recompute each decoder layer in backward (activations: one "
                                      "hidden state per layer instead of the layer's internals)", False)
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "weights dtype of the unlearned model (embedded runs; real benchmarks use benchmark.dtype)", "float32")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = option(
        "attention kernel: auto = flash_attention_2 when flash-attn is installed, the model is on CUDA "
        "and in bf16/fp16, else sdpa", "auto")
    packing: bool = option("padding-free training batches: each micro-batch's rows concatenated into one sequence "
                       "(position ids restart per row; flash_attention_2 runs it varlen, sdpa/eager with a "
                       "block-diagonal mask)", False)
    parallel: Literal["auto", "ddp", "fsdp"] = option(
        "data-parallel engine under torchrun / accelerate launch: ddp (weights on every rank), fsdp "
        "(FSDP2: weights, gradients and optimizer state sharded per decoder layer), auto (fsdp when "
        "accelerate launch was configured for FSDP, else ddp)", "auto")

    def validate(self, engine: str | None = None) -> None:
        """``engine``: the resolved data-parallel engine (default: ``parallel`` as given)."""
        fsdp = (engine or self.parallel) == "fsdp"
        check(not fsdp or self.lora_rank == 0,
               "efficiency.parallel fsdp does not support LoRA yet; use --efficiency.parallel ddp with LoRA")
        check(not fsdp or self.optim == "adamw",
               "efficiency.parallel fsdp needs --efficiency.optim adamw (bitsandbytes optimizers cannot "
               "step FSDP's DTensor shards)")
        check(self.lora_rank >= 0, "efficiency.lora_rank must be >= 0")
        check(self.lora_alpha > 0, "efficiency.lora_alpha must be > 0")
        check(0.0 <= self.lora_dropout < 1.0, "efficiency.lora_dropout must be in [0, 1)")
        check(not self.save_merged or self.lora_rank > 0, "efficiency.save_merged needs efficiency.lora_rank > 0")
