"""The unlearning loop (:mod:`.trainer`) and what it is built from: options, optimisers, schedules,
batch sampling, checkpoints (supervised fine-tuning, built from them, is :mod:`atwu_fast.finetune`)."""
