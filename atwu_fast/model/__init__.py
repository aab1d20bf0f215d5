"""The model side: loading (dtype, attention, checkpointing, LoRA), spreading it over ranks, the
decoder forward to per-token answer quantities without N×V logits, and generation (tiny models built
from a config are :mod:`atwu_fast.finetune.tiny`)."""
