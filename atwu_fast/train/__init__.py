"""The unlearning loop (:mod:`.trainer`) and what it is built from: options, optimisers, schedules,
batch sampling, checkpoints; and supervised fine-tuning (:mod:`.finetune`)."""
