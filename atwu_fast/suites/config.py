"""The ``benchmark`` section: which benchmark a run uses, and the options of the real ones (TOFU, RWKU,
JSONL) on a real model; ``synthetic`` is the embedded benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check, option
from .tofu.tiny import TINY as TINY_MODEL

TOFU_TINY = "tofu_tiny"  # --benchmark tofu_tiny = --benchmark tofu --model tiny


@dataclass
class BenchmarkConfig:
    """Real benchmarks (TOFU, RWKU, JSONL) on a real model; ``synthetic`` is the embedded one."""

    name: str = option("benchmark: synthetic (embedded), tofu, tofu_tiny (TOFU's whole protocol with tiny "
                       "models fine-tuned here; the same as tofu with --model tiny), rwku, jsonl, or one "
                       "registered with atwu_fast.suites.register_suite", "synthetic")
    split: str = option("TOFU split: the forget split to unlearn (forget01, forget05, forget10); python -m "
                        "atwu_fast.finetune: the config to fine-tune on (full, retain90, ...)", "forget10")
    model: str = option("model directory or hub id (real benchmarks); tiny: TOFU's whole protocol with tiny models "
                        "fine-tuned here (section tiny)", "")
    tokenizer: str = option("tokenizer directory or hub id (default: the model's)", "")
    data_dir: str = option("local directory with the benchmark's files (default: the hub dataset)", "")
    targets: int = option("RWKU: unlearn the first K targets jointly (batch setting)", 1)
    rwku_corpus: str = option("RWKU forget corpus config (train_positive_llama3, train_positive_phi3, ...)",
                          "train_positive_llama3")
    forget_file: str = option("jsonl: forget rows ({question, answer} or {text}, optional target_words)", "")
    retain_file: str = option("jsonl: retain rows (same format)", "")
    spans_file: str = option("forget spans: JSON/JSONL rows with target_words per forget row", "")
    chat_template: Literal["auto", "on", "off"] = option(
        "use the tokenizer's chat template (auto: when it has one) or the plain Question/Answer template", "auto")
    system_prompt: str = option("system prompt of the chat template ('' for none)", "You are a helpful assistant.")
    max_length: int = option("maximum tokens per encoded row", 512)
    max_new_tokens: int = option("greedy generation length (TOFU 200, RWKU 30)", 0)
    eval_batch_size: int = option("rows per evaluation forward / generation batch (0: the suite's default, 32; "
                                  "tiny TOFU 64)", 0)
    generate: bool = option("TOFU: greedy generations for ROUGE-L (false: a faster evaluation whose model utility "
                            "is the harmonic mean of the 6 probability and truth-ratio values)", True)
    leak: bool = option("TOFU, with generate and target words: the leak metrics (leak_worst J_W, leak_paraphrase, "
                        "leak_icr, leak_retain J_avg; docs/benchmarks.md)", True)
    leak_rows: int = option("TOFU: forget rows probed for the leak metrics (0: all)", 100)
    leak_judge: str = option("a local causal LM (directory or hub id) that judges leaks instead of target-word matching: it answers whether each answer states the facts, in any wording (default: exact target-word match)", "")
    retain_logs: str = option(
        "retain model's logs: open-unlearning's TOFU_EVAL.json (or its folder) or the original TOFU release's "
        "eval_log_aggregated.json / eval_log_forget.json (or their folder): forget quality (and privleak from "
        "TOFU_EVAL.json); logs of other forget rows are refused", "")
    ds_size: int = option("evaluate only the first N rows of every evaluation set (0: all; the original TOFU "
                          "release evaluated 300)", 0)
    rwku_rouge: Literal["rwku", "rouge_score"] = option(
        "RWKU ROUGE-L recall: rwku (RWKU's own scorer, the rouge package: words split on spaces, case and "
        "punctuation kept, distinct words once) or rouge_score (lowercased, punctuation dropped; not comparable "
        "with RWKU's tables)", "rwku")
    dtype: Literal["float32", "bfloat16", "float16"] = option("model weights dtype", "float32")
    device: str = option("torch device (auto: cuda when available)", "auto")
    epochs: int = option("unlearning epochs over the forget set (0: use train.steps)", 0)
    eval_every_epoch: bool = option("evaluate after every epoch (logs under epoch_N/)", False)
    keep_best_by: str = option("with eval_every_epoch: keep the checkpoint with the best summary metric "
                           "(prefix '-' to minimise), e.g. model_utility", "")
    eval_before: bool = option("also evaluate the target model once before unlearning (a 'target model' row of "
                               "the results, its logs under reference/target model/)", False)
    trust_remote_code: bool = option("run the model repository's own Python code (only for models you trust)", False)

    def __post_init__(self) -> None:
        # tofu_tiny names the laptop-scale TOFU protocol; it is run (and recorded) as tofu with model tiny
        if self.name == TOFU_TINY and self.model in ("", TINY_MODEL):
            self.name, self.model = "tofu", TINY_MODEL

    def validate(self) -> None:
        from . import SUITES

        check(self.name != TOFU_TINY, f"--benchmark {TOFU_TINY} fine-tunes its own tiny models: leave --model unset")
        check(self.name in SUITES, f"unknown benchmark '{self.name}'; choose from {', '.join([*SUITES, TOFU_TINY])}")
        check(self.targets >= 1, "benchmark.targets must be >= 1")
        check(self.max_length >= 8, "benchmark.max_length must be >= 8")
        check(self.max_new_tokens >= 0 and self.eval_batch_size >= 0, "benchmark eval sizes must be >= 0")
        check(self.epochs >= 0, "benchmark.epochs must be >= 0")
        check(self.ds_size >= 0, "benchmark.ds_size must be >= 0")
        check(self.leak_rows >= 0, "benchmark.leak_rows must be >= 0")
