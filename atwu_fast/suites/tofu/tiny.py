"""TOFU's whole protocol at laptop scale (``--benchmark tofu --model tiny``): a tiny target model and a
tiny retain model fine-tuned from scratch on an author subset of the real TOFU data, then unlearning
and the full TOFU evaluation with forget quality against the local retain model.

TOFU fine-tunes one base model on ``full`` (the target) and on ``retainNN`` (the retain model). Here
the base is a tiny Llama with a byte-level BPE tokenizer trained on all of TOFU's text (both cached
under ``--cache-dir``), and the models learn a subset of the authors that a CPU can memorise:

* target: the forget split's authors, the retain authors of ``retain_perturbed`` (the retain
  evaluation set: 20 authors, one of whose rows TOFU swapped for a row of author 22, so 21 authors)
  and ``tiny.extra_authors`` more retain authors, in order;
* retain model: the same without the forget split's authors;
* both (``tiny.general``): ``real_authors`` and ``world_facts``, standing in for the pre-training
  knowledge TOFU's base models bring to those two evaluation sets (a model trained from scratch
  knows no real author); unlearning never trains on them, so they measure collateral damage as in TOFU.

Unlearning forgets the forget split and keeps the retain subset the models learned (TOFU's retain set
is all of ``retainNN``: the rows the target learned). Evaluation is :class:`~.tofu.TofuSuite`'s, the
retain model evaluated first as the "retain model" reference row; the forget split's target-word file
(``<split>_target_words.json`` in the data directory) gives span alignment when no
``--benchmark.spans_file`` is set.

The methods' hyper-parameters tuned on this protocol (``python -m atwu_fast.tune --benchmark tofu
--model tiny ...``) ship in ``tiny_tuned.json`` beside this module; a run applies them as it does
the embedded benchmark's (``--tuned``). They belong to the tiny models: a real TOFU model (``--model
<id>``) gets none.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ...config import check, option
from ...data.io import atomic_dir, cache_key
from ...data.readers import DataError, load_rows
from ...finetune.build import SUMMARY_FILE, finetune_to_dir
from ...finetune.loop import FinetuneConfig
from ...finetune.parallel import run_jobs
from ...finetune.tiny import ModelConfig, TinyConfig, build_tiny_llama, train_tokenizer
from ...model.loading import load_pretrained
from ..base import BenchmarkData
from ..real import encode_training
from .suite import CONFIGS, HUB_ID, TofuSuite, load_qa_config, load_tofu_sets

TINY = "tiny"  # --model tiny (or --benchmark tofu_tiny)
TOFU_TINY = "tofu_tiny"  # --benchmark tofu_tiny = --benchmark tofu --model tiny
CACHE_VERSION = 1
AUTHOR_ROWS = 20  # TOFU: every fictitious author has 20 consecutive QA rows in full / retainNN / forgetNN
GENERAL = ("real_authors", "world_facts")  # the general-knowledge sets both tiny models learn
TEXT_FIELDS = ("question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer")


UNDERFIT_FACTOR = 4  # a tiny model stopped by the step cap above this multiple of the target loss is flagged


def underfit_note(kind: str, summary: dict, schedule: FinetuneConfig) -> str | None:
    """A warning when a tiny model stopped at the step cap with its answer NLL above ``UNDERFIT_FACTOR`` x
    the target loss: some seeds sit on a loss plateau for hundreds of steps, and the cap then leaves a
    model that has not learned its rows (a weak retain reference for forget quality, or a target with
    little to forget)."""
    capped = schedule.epochs == 0 and summary.get("steps", 0) >= schedule.max_steps
    if capped and schedule.target_loss > 0 and summary.get("final_nll", 0.0) > UNDERFIT_FACTOR * schedule.target_loss:
        return (f"warning: the tiny TOFU {kind} model stopped at the {schedule.max_steps}-step cap with answer NLL "
                f"{summary['final_nll']:.2f} (aim {schedule.target_loss:g}): it under-fits, and this seed's results "
                f"compare against it; raise --tiny.finetune.max_steps or use another seed")
    return None


def tofu_schedule() -> FinetuneConfig:
    """How the tiny TOFU models are fine-tuned (chosen by measurement: docs/benchmarks.md, "TOFU at laptop scale").
    A 100-step warm-up and a linear decay over the 3000-step cap: with a 20-step warm-up at a constant rate some
    initialisations sat on a loss plateau until the old 1500-step cap (docs/studies/tofu_pairs.md)."""
    return FinetuneConfig(lr=3e-3, batch_size=32, max_steps=3000, min_steps=200, target_loss=0.05, warmup_steps=100,
                          lr_schedule="linear", group_by_length=8)


@dataclass
class TinyTofuConfig(TinyConfig):
    """The laptop-scale TOFU protocol (``--benchmark tofu --model tiny``): the tiny models and their subset."""

    extra_authors: int = option("retain authors the tiny models learn besides the retain_perturbed authors "
                                "(the first ones of retainNN)", 0)
    general: bool = option("both tiny models also learn real_authors and world_facts (stand-in pre-training "
                           "knowledge for those evaluation sets)", True)
    finetune: FinetuneConfig = field(default_factory=tofu_schedule)

    def validate(self) -> None:
        super().validate()
        check(self.extra_authors >= 0, "tiny.extra_authors must be >= 0")


def tofu_texts(source: str) -> list[str]:
    """Every text of every TOFU config (questions, answers, paraphrases, perturbations), in order: what
    the tiny tokenizer is trained on."""
    texts = ["Question: Answer:"]
    for config in ("full", *CONFIGS):
        for row in load_rows(source, config):
            for key in TEXT_FIELDS:
                value = row.get(key)
                texts.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v)
    return texts


def cached_tokenizer(source: str, vocab_size: int, cache: Path) -> tuple[PreTrainedTokenizerFast, Path]:
    """The byte-level BPE tokenizer of TOFU's text (trained on first use, cached by the text's hash)."""
    texts = tofu_texts(source)
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    tok_dir = cache / f"tofu-tokenizer-{cache_key(CACHE_VERSION, digest, vocab_size)}"
    if not (tok_dir / "tokenizer.json").exists():
        atomic_dir(tok_dir, train_tokenizer(texts, vocab_size).save_pretrained)
    return PreTrainedTokenizerFast.from_pretrained(tok_dir), tok_dir


def author_subset(retain: list[dict], retain_eval: list[dict], extra: int) -> list[int]:
    """Indices of the retain authors the tiny models learn: every author with a row in ``retain_eval``,
    then the first ``extra`` others of ``retain``."""
    index = {row["question"]: i for i, row in enumerate(retain)}
    missing = [r["question"] for r in retain_eval if r["question"] not in index]
    if missing:
        raise DataError(f"retain_perturbed row {missing[0][:60]!r} is not a retain row of this split")
    authors = sorted({index[r["question"]] // AUTHOR_ROWS for r in retain_eval})
    others = [a for a in range(math.ceil(len(retain) / AUTHOR_ROWS)) if a not in authors]
    return sorted(authors + others[:extra])


def tiny_positions(bcfg) -> int:
    """The tiny model's position table: the longest encoded row plus a generation (and a margin)."""
    return bcfg.max_length + (bcfg.max_new_tokens or TinyTofuSuite.default_new_tokens) + 8


def _train_tiny(kind: str, tok_dir: str, encoded: list[dict], model: ModelConfig, max_positions: int,
                schedule: FinetuneConfig, seed: int, out_dir: str) -> dict:
    """Fine-tune one tiny model from scratch into ``out_dir`` (a worker process when parallel; checkpoints
    beside it, so an interrupted fine-tuning resumes)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    return finetune_to_dir(lambda: build_tiny_llama(model, tokenizer, max_positions), tokenizer, encoded, schedule,
                           seed, out_dir, log=lambda m: print(f"[{kind}]{m}", flush=True),
                           checkpoint_dir=Path(f"{out_dir}.checkpoints"), checkpoint_every=100, resume=True)


class TinyTofuSuite(TofuSuite):
    """``cfg`` sections used: benchmark, tofu, tiny, cache_dir (and train, efficiency)."""

    sections = {**TofuSuite.sections, "tiny": TinyTofuConfig}
    default_new_tokens = 128  # greedy generation length of the tiny protocol
    tuned_file = Path(__file__).with_name("tiny_tuned.json")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tcfg: TinyTofuConfig = cfg.tiny
        self.tok_dir: Path | None = None
        self.train_rows: dict[str, list[dict]] = {}
        self.dirs: dict[str, Path] = {}

    # ------------------------------------------------------------------ data and models
    def spans_file(self) -> str:
        if self.bcfg.spans_file:
            return self.bcfg.spans_file
        found = Path(self.bcfg.data_dir) / f"{self.tofu.split}_target_words.json" if self.bcfg.data_dir else None
        return str(found) if found is not None and found.is_file() else ""

    def read(self, with_eval: bool = True) -> BenchmarkData:
        """forgetNN, and as retain rows those of the retain authors the models learn (:func:`author_subset`)."""
        data = load_tofu_sets(self.bcfg.data_dir or HUB_ID, self.tofu.split, self.spans_file(), with_eval=True)
        authors = author_subset(data.retain, data.eval_sets["retain"], self.tcfg.extra_authors)
        retain = [r for i, r in enumerate(data.retain) if i // AUTHOR_ROWS in set(authors)]
        return BenchmarkData(data.name, data.forget, retain, data.eval_sets if with_eval else {},
                             {**data.info, "retain_authors": authors})

    def load_tokenizer(self):
        tokenizer, self.tok_dir = cached_tokenizer(self.bcfg.data_dir or HUB_ID, self.tcfg.vocab_size,
                                                   Path(self.cfg.cache_dir))
        return tokenizer

    def load_data(self, log) -> None:
        super().load_data(log)
        source, data = self.bcfg.data_dir or HUB_ID, self.data
        general = [r for name in GENERAL for r in load_qa_config(source, name)] if self.tcfg.general else []
        self.train_rows = {"target": data.forget + data.retain + general, "retain": data.retain + general}
        log(f"tofu (tiny): both models learn {len(data.info['retain_authors'])} retain authors ({len(data.retain)} "
            f"rows) and {len(general)} general rows, the target also the {len(data.forget)} forget rows")

    def seed_overrides(self, seed: int) -> dict:
        """A seed is a fresh tiny target/retain pair (initialisation) and a fresh unlearning order; each pair is
        fine-tuned once and cached."""
        return {"tiny.model.seed": seed, "train.seed": seed}

    @property
    def max_positions(self) -> int:
        return tiny_positions(self.bcfg)

    def model_dirs(self) -> dict[str, Path]:
        t = self.tcfg
        key = cache_key(CACHE_VERSION, self.tok_dir.name, self.tofu.split, self.data.info["retain_authors"],
                        t.general, t.model, t.finetune.cache_identity(), self.max_positions, self.bcfg.max_length,
                        self.fmt.use_chat, self.fmt.system_prompt if self.fmt.use_chat else "")
        return {kind: Path(self.cfg.cache_dir) / f"tofu-{kind}-{key}" for kind in self.train_rows}

    def prepare_models(self, log) -> None:
        self.dirs = self.model_dirs()
        missing = [k for k, d in self.dirs.items() if not (d / SUMMARY_FILE).exists()]
        t = self.tcfg
        if missing:
            log(f"fine-tuning the tiny TOFU {' and '.join(missing)} model(s); cached for later runs")
            jobs = {k: partial(_train_tiny, k, str(self.tok_dir), encode_training(self.fmt, self.train_rows[k], k),
                               t.model, self.max_positions, t.finetune, t.model.seed + (0 if k == "target" else 1),
                               str(self.dirs[k]))
                    for k in missing}
            for k, s in run_jobs(jobs).items():
                log(f"  {k}: {s['rows']} QA pairs, {s['steps']} steps, final answer NLL {s['final_nll']:.4f} "
                    f"({s['seconds']:.0f}s, {s['cpu_seconds']:.0f} CPU s)")
        for k, d in self.dirs.items():  # cached models too: every run on an under-fit pair says so
            if note := underfit_note(k, json.loads((d / SUMMARY_FILE).read_text()), t.finetune):
                log(note)

    def load_model(self, kind: str):
        model, _ = load_pretrained(str(self.dirs[kind]), "", self.bcfg.dtype, self.bcfg.device)
        return model

    def load_target(self):
        return self.load_model("target")

    def reference_models(self) -> dict:
        return {"retain model": partial(self.load_model, "retain"), "target model": self.load_target}

    def retain_reference(self):
        return None

    # ------------------------------------------------------------------ the run
    @property
    def eval_every(self) -> int:
        """Span alignment every epoch over the forget rows; full evaluations per epoch only when asked."""
        return self.steps_per_epoch

    @property
    def evaluates_at_checkpoints(self) -> bool:
        return self.bcfg.eval_every_epoch

    def default_output_dir(self, label: str, stamp: str) -> Path:
        return Path("runs") / f"tofu-tiny-{label}-{stamp}"

