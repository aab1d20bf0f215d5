"""The benchmark protocol: what the one driver (:mod:`atwu_fast.unlearn.driver`) asks of a benchmark.

A suite knows how to load and encode its rows (forget / retain training rows, evaluation sets), where
the model to unlearn comes from (a fresh copy per method) and which reference models it has (the
embedded benchmark's retain and target models), how to evaluate a model (its metrics, per-row logs in
the harness layout, sample generations), which forget-quality reference it uses (a retain model's
evaluation, or published retain logs), and which columns its results table has. Everything else —
methods, training, token scores, outputs, the report — is the driver's and the same for every suite.

Distributed evaluation is explicit: the driver (and ``python -m atwu_fast.eval``) passes its
:class:`~atwu_fast.model.distributed.DistContext` to :meth:`Suite.evaluate` as ``ctx``, and the suite
hands it to every model-side evaluation call (``row_tokens``, ``generate``, ``map_answer_tokens``,
``greedy_generate``, a model judge), which then shard their rows over the ranks and gather the results
in row order on every rank. With the default ``SINGLE`` this process evaluates every row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..data.labels import TARGET_KIND_NAMES
from ..eval.logs import RetainReference
from ..model.distributed import SINGLE, DistContext

Column = tuple[str, str, str]  # (metric key, title, format)


@dataclass
class BenchmarkData:
    """A benchmark's rows: training rows (``forget``, ``retain``: ``question``/``answer`` or ``text``,
    optionally ``target_words``) and the evaluation sets in their public schemas."""

    name: str
    forget: list[dict]
    retain: list[dict]
    eval_sets: dict[str, list[dict]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass
class Evaluation:
    """One model's evaluation on a suite."""

    metrics: dict  # metric -> value (a results.json row)
    samples: list[dict] = field(default_factory=list)  # a few forget generations: question, answer, generation
    logs: Optional[dict] = None  # per-row logs in the reference harness's layout (<NAME>_EVAL.json)
    retain_reference: Optional[RetainReference] = None  # what other models' forget quality needs, were this the retain model

    def add(self, values: dict) -> None:
        """Metrics measured besides the suite's own (span alignment): into ``metrics`` and, when the
        evaluation has logs, into them as entries."""
        self.metrics.update(values)
        if self.logs is not None:
            from ..eval.logs import entry

            for key, value in values.items():
                self.logs[key] = entry(value)


class Suite:
    """Base of every benchmark; subclasses fill the attributes in :meth:`load_data` and implement
    :meth:`load_target` and :meth:`evaluate`."""

    name = ""
    sections: dict[str, type] = {}  # its own config sections (name -> dataclass), settable only when it runs
    log_name: Optional[str] = None  # <log_name>_EVAL.json / _SUMMARY.json per evaluation, when it has logs
    kind_names: dict[int, str] = TARGET_KIND_NAMES  # how the report names the span kinds of its forget tokens
    columns: list[Column] = []  # headline columns of its results table

    def __init__(self, cfg):
        self.cfg = cfg
        self.tokenizer = None
        self.forget_rows: list[dict] = []  # the forget rows as the data has them (the report shows their text)
        self.forget: list[dict] = []  # encoded training rows (input_ids, labels, span_kind)
        self.retain: list[dict] = []
        self.has_spans = False  # the forget rows mark ground-truth forget tokens (span alignment)
        self.judge = None  # the leak metric's model judge (atwu_fast.eval.judge); None: target-word match

    # ------------------------------------------------------------------ data and models
    def load_data(self, log: Callable[[str], None]) -> None:
        """Load, check and encode the rows (and the tokenizer); user errors raise DataError/ValueError."""
        raise NotImplementedError

    def prepare_models(self, log: Callable[[str], None]) -> None:
        """Make the suite's models available (e.g. fine-tune and cache them); none by default."""

    def load_target(self):
        """A fresh copy of the model to unlearn, in eval mode."""
        raise NotImplementedError

    def encode(self, question: str, answer: str) -> dict:
        """A QA row in this benchmark's format (what a method's own rows use, e.g. DPO's preferred answers)."""
        raise NotImplementedError(f"the {self.name} benchmark cannot encode new QA rows")

    def reference_models(self) -> dict[str, Callable[[], object]]:
        """Models evaluated once before unlearning, as rows of the results table (name -> loader). A
        model named "retain model" is the forget-quality reference of the others."""
        return {}

    def retain_reference(self) -> Optional[RetainReference]:
        """The forget-quality reference that needs no model (published retain logs), if any."""
        return None

    # ------------------------------------------------------------------ the run
    def train_config(self, train):
        """The ``train`` section as this suite runs it (e.g. epochs turned into steps)."""
        return train

    def efficiency(self, efficiency):
        """The ``efficiency`` section as this suite runs it (e.g. the benchmark's weights dtype)."""
        return efficiency

    def uses_cuda(self) -> bool:
        return False

    @property
    def eval_batch_size(self) -> int:
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> Optional[int]:
        """Optimiser steps per pass over the forget rows, where the suite counts in epochs."""
        return None

    @property
    def eval_every(self) -> int:
        """Steps between checkpoint evaluations during training (0: only after the last step)."""
        return 0

    @property
    def evaluates_at_checkpoints(self) -> bool:
        """Whether checkpoint evaluations run the full :meth:`evaluate` (else only span alignment)."""
        return False

    @property
    def keep_best_by(self) -> str:
        """A summary metric whose best checkpoint is kept (prefix '-' to minimise), or ''."""
        return ""

    def epoch(self, step: int) -> Optional[int]:
        return math.ceil(step / self.steps_per_epoch) if self.steps_per_epoch else None

    def default_output_dir(self, label: str, stamp: str) -> Path:
        return Path("runs") / f"{self.name}-{label}-{stamp}"

    # ------------------------------------------------------------------ seeds and tuned values
    tuned_file: Optional[Path] = None  # the methods' tuned hyper-parameters on this benchmark (JSON)

    def seed_overrides(self, seed: int) -> dict:
        """Dotted config overrides of one seed of a study (by default the unlearning seed alone)."""
        return {"train.seed": seed}

    def quick_overrides(self) -> dict:
        """Dotted config overrides of a faster, likelihood-only evaluation for search trials (none by default)."""
        return {}

    def tuned(self) -> dict[str, dict]:
        """Method name → dotted config values tuned on this benchmark (``python -m atwu_fast.tune``)."""
        if self.tuned_file is None or not self.tuned_file.is_file():
            return {}
        import json

        return json.loads(self.tuned_file.read_text()).get("methods", {})

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, retain: Optional[RetainReference], ctx: DistContext = SINGLE) -> Evaluation:
        """All metrics of ``model`` (``retain``: the forget-quality reference). Every rank of ``ctx``
        calls it alike; the suite passes ``ctx`` to its evaluation calls, which shard the rows over
        the ranks (module docstring). Every rank returns the whole evaluation."""
        raise NotImplementedError

    def write_logs(self, directory: Path, evaluation: Evaluation) -> None:
        """The evaluation's per-row logs in the harness layout, when it has any."""
        if evaluation.logs is not None and self.log_name:
            from ..eval.logs import save_logs

            save_logs(directory, evaluation.logs, self.log_name)

    def columns_for(self, rows: dict[str, dict]) -> list[Column]:
        """The headline columns of its results table: those some row has a value for."""
        from ..report.tables import columns_for

        return columns_for(self.columns, rows)
