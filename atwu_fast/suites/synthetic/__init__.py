"""The embedded benchmark: a fictitious-authors QA set in the TOFU schema generated offline
(:mod:`.world`), a tokenizer and two tiny models fine-tuned on it and cached (:mod:`.assets`), and
its evaluation (:mod:`.evaluate`). ``python -m atwu_fast.unlearn`` with no arguments runs it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ...data.formatting import encode_qa
from ...data.labels import FACT_KIND_NAMES
from ...eval.judge import load_judge
from ...eval.logs import RetainReference
from ...finetune.loop import FinetuneConfig
from ...finetune.tiny import ModelConfig, TokenizerConfig
from ...model.distributed import SINGLE, DistContext
from ..base import Column, Evaluation, Suite
from . import assets
from .evaluate import EvalConfig, evaluate_model, evaluation_splits
from .world import SyntheticConfig, generate

COLUMNS: list[Column] = [  # the headline metrics (docs/benchmarks.md)
    ("forget_quality", "FQ", "{:.2e}"),
    ("model_utility", "MU", "{:.3f}"),
    ("forget_acc", "forget acc", "{:.3f}"),
    ("retain_acc", "retain acc", "{:.3f}"),
    ("forget_rouge", "forget RL", "{:.3f}"),
    ("retain_rouge", "retain RL", "{:.3f}"),
    ("forget_truth_ratio", "forget TR", "{:.3f}"),
    ("leak_worst", "J_W", "{:.3f}"),
    ("leak_retain", "J_avg", "{:.3f}"),
    ("span_auroc", "span AUROC", "{:.3f}"),
    ("span_ap", "span AP", "{:.3f}"),
    ("span_auroc_avg", "AUROC avg", "{:.3f}"),
]

__all__ = ["COLUMNS", "EvalConfig", "SyntheticConfig", "SyntheticSuite"]


TUNED_FILE = Path(__file__).with_name("tuned.json")  # the shipped tuned values (python -m atwu_fast.tune)


class SyntheticSuite(Suite):
    """``cfg`` sections used: data, tokenizer, model, pretrain, eval, cache_dir (and train, efficiency)."""

    name = "synthetic"
    sections = {"data": SyntheticConfig, "tokenizer": TokenizerConfig, "model": ModelConfig, "pretrain": FinetuneConfig,
                "eval": EvalConfig}
    kind_names = FACT_KIND_NAMES
    columns = COLUMNS
    tuned_file = TUNED_FILE

    def __init__(self, cfg):
        super().__init__(cfg)
        self.spec = assets.AssetSpec(cfg.data, cfg.tokenizer, cfg.model, cfg.pretrain, cfg.eval.max_new_tokens)
        self.splits: dict[str, list[dict]] = {}
        self.encoded: dict[str, list[dict]] = {}
        self.dirs: dict[str, Path] = {}
        self.tok_dir: Optional[Path] = None

    def load_data(self, log) -> None:
        t0 = time.perf_counter()
        self.splits = generate(self.cfg.data)
        self.tokenizer, self.tok_dir = assets.cached_tokenizer(self.spec, self.splits, Path(self.cfg.cache_dir), log)
        max_length = self.cfg.tokenizer.max_length
        self.encoded = {name: [encode_qa(self.tokenizer, r["question"], r["answer"], max_length, spans=r.get("spans"))
                               for r in rows]
                        for name, rows in self.splits.items()}
        self.forget_rows, self.forget, self.retain = self.splits["forget"], self.encoded["forget"], self.encoded["retain"]
        self.has_spans = True
        self.judge = load_judge(self.cfg.eval.leak_judge) if self.cfg.eval.leak else None  # fails before training
        log(f"data: {', '.join(f'{k} {len(v)}' for k, v in self.splits.items())} QA pairs; "
            f"vocab {len(self.tokenizer)}  ({time.perf_counter() - t0:.0f}s)")

    def prepare_models(self, log) -> None:
        self.dirs = assets.model_dirs(self.spec, Path(self.cfg.cache_dir))
        assets.train_missing_models(self.spec, self.tok_dir, self.dirs, log)

    def load_target(self):
        return assets.load_model(self.dirs["target"])

    def encode(self, question: str, answer: str) -> dict:
        return encode_qa(self.tokenizer, question, answer, self.cfg.tokenizer.max_length)

    def reference_models(self) -> dict:
        return {"retain model": lambda: assets.load_model(self.dirs["retain"]), "target model": self.load_target}

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.eval.batch_size

    @property
    def eval_every(self) -> int:
        return self.cfg.eval.eval_every

    def default_output_dir(self, label: str, stamp: str) -> Path:
        return Path("runs") / f"{label}-{stamp}"

    def seed_overrides(self, seed: int) -> dict:
        """A seed is a fresh world: the generator, the tiny models' initialisation and the unlearning."""
        return {"data.seed": seed, "model.seed": seed, "train.seed": seed}

    def quick_overrides(self) -> dict:
        return {"eval.generate": False}

    def evaluate(self, model, retain: Optional[RetainReference], ctx: DistContext = SINGLE) -> Evaluation:
        e = self.cfg.eval
        result = evaluate_model(model, self.tokenizer, evaluation_splits(self.splits, e.retain_authors),
                                self.cfg.tokenizer.max_length, e.batch_size, e.max_new_tokens, e.generate,
                                retain_forget_truth_ratios=retain.forget_truth_ratio if retain is not None else None,
                                leak_rows=e.leak_rows if e.leak else None, leak_judge=self.judge, ctx=ctx)
        return Evaluation(result.metrics, result.samples,
                          retain_reference=RetainReference(result.forget_truth_ratios, source="retain model"))

    def columns_for(self, rows: dict[str, dict]) -> list[Column]:
        return self.columns
