"""Fine-tuning: the models an unlearning protocol starts from. Tiny Llama models built from a config
with a tokenizer trained on a benchmark's text (:mod:`.tiny`), the supervised fine-tuning loop with
checkpoints and resume (:mod:`.loop`), a fine-tuned model directory made at once (:mod:`.build`),
several jobs in parallel processes (:mod:`.parallel`); ``python -m atwu_fast.finetune`` (:mod:`.command`)."""
