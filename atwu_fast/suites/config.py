"""The ``benchmark`` section: which benchmark a run uses, and the options every real benchmark (TOFU,
RWKU, JSONL, one registered) shares: the model, the data directory, the prompt format, evaluation sizes.
An option only one benchmark has lives in that benchmark's own section (``tofu``, ``rwku``, ``jsonl``:
``config.py`` in its folder); the embedded benchmark's are ``data``, ``tokenizer``, ``model``,
``pretrain`` and ``eval``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check, option
from .tofu.tiny import TINY as TINY_MODEL
from .tofu.tiny import TOFU_TINY

MOVED = {  # options that moved from the shared section to their benchmark's own (old dotted key -> new)
    **{f"benchmark.{key}": f"tofu.{key}" for key in ("split", "generate", "leak", "leak_rows", "leak_judge",
                                                     "retain_logs")},
    "benchmark.targets": "rwku.targets", "benchmark.rwku_corpus": "rwku.corpus", "benchmark.rwku_rouge": "rwku.rouge",
    "benchmark.forget_file": "jsonl.forget_file", "benchmark.retain_file": "jsonl.retain_file"}


@dataclass
class BenchmarkConfig:
    """Which benchmark, and the options every real benchmark shares (its model, data, prompts, evaluation)."""

    name: str = option("benchmark: synthetic (embedded), tofu, tofu_tiny (TOFU's whole protocol with tiny "
                       "models fine-tuned here; the same as tofu with --model tiny), rwku, jsonl, or one "
                       "registered with atwu_fast.suites.register_suite", "synthetic")
    model: str = option("model directory or hub id (real benchmarks); tiny: TOFU's whole protocol with tiny models "
                        "fine-tuned here (section tiny)", "")
    tokenizer: str = option("tokenizer directory or hub id (default: the model's)", "")
    data_dir: str = option("local directory with the benchmark's files (default: the hub dataset)", "")
    spans_file: str = option("forget spans: JSON/JSONL rows with target_words per forget row", "")
    chat_template: Literal["auto", "on", "off"] = option(
        "use the tokenizer's chat template (auto: when it has one) or the plain Question/Answer template", "auto")
    system_prompt: str = option("system prompt of the chat template ('' for none)", "You are a helpful assistant.")
    max_length: int = option("maximum tokens per encoded row", 512)
    max_new_tokens: int = option("greedy generation length (TOFU 200, RWKU 30)", 0)
    eval_batch_size: int = option("rows per evaluation forward / generation batch (0: the suite's default, 32; "
                                  "tiny TOFU 64)", 0)
    ds_size: int = option("evaluate only the first N rows of every evaluation set (0: all; the original TOFU "
                          "release evaluated 300)", 0)
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
        check(self.max_length >= 8, "benchmark.max_length must be >= 8")
        check(self.max_new_tokens >= 0 and self.eval_batch_size >= 0, "benchmark eval sizes must be >= 0")
        check(self.epochs >= 0, "benchmark.epochs must be >= 0")
        check(self.ds_size >= 0, "benchmark.ds_size must be >= 0")
