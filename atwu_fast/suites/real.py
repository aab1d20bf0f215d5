"""What the real benchmarks (TOFU, RWKU, JSONL) share: a model directory or hub id with its tokenizer,
rows encoded with its chat template (or the plain template), evaluation logs in the reference
harness's layout, an optional retain model's logs for forget quality, and epochs over the forget set."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

from ..data.formatting import Formatter
from ..data.labels import IGNORE_INDEX
from ..data.readers import DataError
from ..eval.logs import RetainReference, summarize
from ..model.distributed import SINGLE, DistContext
from ..model.loading import load_pretrained, load_tokenizer, uses_cuda
from .base import BenchmarkData, Column, Evaluation, Suite
from .tofu.original_logs import limit_rows, load_reference

SPAN_COLUMNS: list[Column] = [("span_auroc", "span AUROC", "{:.3f}"), ("span_ap", "span AP", "{:.3f}"),
                              ("span_auroc_nll", "NLL span AUROC", "{:.3f}")]
TRAIN_COLUMNS: list[Column] = [("train_seconds", "train s", "{:.1f}")]
SAMPLE_LOGS = ("forget_Q_A_ROUGE", "forget_FB", "forget_QA", "forget_AA")  # the first one present is sampled


def encode_training(fmt: Formatter, rows: list[dict], name: str = "forget") -> list[dict]:
    """Encoded rows, always with ``span_kind`` (all answer tokens OUTSIDE when a row has no target
    words); a row whose answer ``max_length`` cuts away entirely is a :class:`DataError`."""
    encoded = [fmt.row({**r, "target_words": r.get("target_words") or []}) for r in rows]
    for i, row in enumerate(encoded):
        if all(label == IGNORE_INDEX for label in row["labels"]):
            raise DataError(f"{name} row {i}: the answer is fully truncated by max_length {fmt.max_length}; "
                            "raise --benchmark.max_length")
    return encoded


def forget_samples(logs: dict, n: int = 5) -> list[dict]:
    """The first ``n`` forget generations of the evaluation logs (prompt, answer, generation)."""
    for key in SAMPLE_LOGS:
        rows = (logs.get(key) or {}).get("value_by_index") or {}
        if rows:
            return [{"question": r.get("input", ""), "answer": r.get("ground_truth", ""),
                     "generation": r.get("generation", "")} for _, r in sorted(rows.items(), key=lambda kv: int(kv[0]))[:n]]
    return []


def load_retain_reference(path: str) -> Optional[RetainReference]:
    """``--retain-logs``: a retain model's evaluation logs (forget quality, privleak), or None."""
    if not path:
        return None
    try:
        return load_reference(path)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"--retain-logs: {exc}") from None


class RealSuite(Suite):
    """A real benchmark on a real model (``cfg.benchmark``); subclasses read the rows
    (:meth:`read`) and evaluate them (:meth:`evaluate_logs`)."""

    log_name = ""
    default_new_tokens = 200
    default_eval_batch_size = 32

    def __init__(self, cfg):
        super().__init__(cfg)
        self.bcfg = cfg.benchmark
        self.data: Optional[BenchmarkData] = None
        self.fmt: Optional[Formatter] = None
        self.retain_logs: Optional[RetainReference] = None

    # ------------------------------------------------------------------ data and models
    def read(self, with_eval: bool = True) -> BenchmarkData:
        raise NotImplementedError

    def load_data(self, log) -> None:
        self.load_eval_data()
        self.forget_rows = self.data.forget
        self.forget = encode_training(self.fmt, self.data.forget)
        self.retain = encode_training(self.fmt, self.data.retain, "retain")
        if not self.retain:
            raise DataError(f"{self.name}: no retain rows (RWKU uses the next K targets' texts; lower --targets)")
        self.has_spans = any(r.get("target_words") for r in self.data.forget)
        log(f"{self.name}: forget {len(self.forget)} rows, retain {len(self.retain)} rows; model {self.bcfg.model}")

    def load_eval_data(self) -> None:
        """The rows, the retain logs and the tokenizer (no model yet): what evaluation needs besides the model."""
        if not self.bcfg.model:
            raise DataError("a real benchmark needs --model (a model directory or hub id)")
        self.data = self.read()
        self.data.eval_sets = limit_rows(self.data.eval_sets, self.bcfg.ds_size)
        self.retain_logs = load_retain_reference(self.retain_logs_file)
        self.tokenizer = self.load_tokenizer()
        self.fmt = Formatter(self.tokenizer, self.bcfg.chat_template, self.bcfg.system_prompt, self.bcfg.max_length)

    @property
    def retain_logs_file(self) -> str:
        """A retain model's published logs, the forget-quality reference (none by default)."""
        return ""

    def load_tokenizer(self):
        """The model's tokenizer (or ``--benchmark.tokenizer``)."""
        return load_tokenizer(self.bcfg.tokenizer or self.bcfg.model, self.bcfg.trust_remote_code)

    def load_target(self):
        model, _ = load_pretrained(self.bcfg.model, self.bcfg.tokenizer, self.bcfg.dtype, self.bcfg.device,
                                   self.bcfg.trust_remote_code)
        return model

    def encode(self, question: str, answer: str) -> dict:
        return self.fmt.qa(question, answer, [])

    def reference_models(self) -> dict:
        return {"target model": self.load_target} if self.bcfg.eval_before else {}

    def retain_reference(self) -> Optional[RetainReference]:
        return self.retain_logs

    # ------------------------------------------------------------------ the run
    def train_config(self, train):
        return dataclasses.replace(train, steps=self.bcfg.epochs * self.steps_per_epoch) if self.bcfg.epochs else train

    def efficiency(self, efficiency):
        return dataclasses.replace(efficiency, dtype=self.bcfg.dtype)  # the weights keep benchmark.dtype

    def uses_cuda(self) -> bool:
        return uses_cuda(self.bcfg.device)

    @property
    def eval_batch_size(self) -> int:
        return self.bcfg.eval_batch_size or self.default_eval_batch_size

    @property
    def max_new_tokens(self) -> int:
        return self.bcfg.max_new_tokens or self.default_new_tokens

    @property
    def steps_per_epoch(self) -> int:
        train = self.cfg.train
        return math.ceil(len(self.forget) / (train.forget_batch_size * train.grad_accum))

    @property
    def eval_every(self) -> int:
        return self.steps_per_epoch if self.bcfg.eval_every_epoch else 0

    @property
    def evaluates_at_checkpoints(self) -> bool:
        return True

    @property
    def keep_best_by(self) -> str:
        return self.bcfg.keep_best_by

    def default_output_dir(self, label: str, stamp: str) -> Path:
        return Path("runs") / f"{self.name}-{label}-{stamp}"

    # ------------------------------------------------------------------ evaluation
    def evaluate_logs(self, model, retain: Optional[RetainReference], ctx: DistContext = SINGLE) -> dict:
        """The evaluation logs (``<log_name>_EVAL.json`` layout), sharded over ``ctx``'s ranks
        (:meth:`Suite.evaluate`)."""
        raise NotImplementedError

    def evaluate(self, model, retain: Optional[RetainReference], ctx: DistContext = SINGLE) -> Evaluation:
        logs = self.evaluate_logs(model, retain, ctx)
        return Evaluation(summarize(logs), forget_samples(logs), logs, RetainReference.from_logs(logs))
