"""Every option of an unlearning run, with its default: the experiment config composed of the sections
that live beside the code they configure (one source of defaults).

Sections map to command-line flags ``--<section>.<field>`` and to YAML keys. Methods read their
hyper-parameters from their own section (``atwu``, ``wga``, ...), so two methods can have different
defaults for a parameter of the same name (WGA's β = 1, ATWU's β = 5). A benchmark's own options live
in its own sections (``tofu``, ``rwku``, ``jsonl``, the embedded one's ``data`` ... ``eval``) and can be
set only when that benchmark runs. Both come from their registries, so adding a method or a benchmark
adds its sections here by itself.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from ..config import ConfigError, check, option
from ..methods import DEFAULT_METHOD, METHODS, get_method, param_sections
from ..methods.weights import SOURCES
from ..report.progress import LogConfig
from ..suites import check_sections_apply, suite_sections
from ..suites.config import BenchmarkConfig
from ..suites.tofu.tiny import TINY
from ..train.config import EfficiencyConfig, TrainConfig

SHORTCUTS = {"--method": "method", "--methods": "methods", "--weights": "weights", "--output-dir": "output_dir",
             "--seed": "train.seed",
             "--benchmark": "benchmark.name", "--split": "tofu.split", "--model": "benchmark.model",
             "--targets": "rwku.targets", "--retain-logs": "tofu.retain_logs"}


def section(cls: type):
    """A config section: a nested dataclass, built from its defaults."""
    return field(default_factory=cls)


def with_registered_sections(cls: type) -> type:
    """Class decorator (applied before ``@dataclass``): one section per registered method's
    hyper-parameters (``atwu``, ``wga``, ...) after ``efficiency``, and one per benchmark's own options
    (``data`` ... ``eval`` of the embedded one, ``tofu``, ``tiny``, ``rwku``, ``jsonl``) after ``benchmark``:
    registering a method or a benchmark adds its section here by itself."""
    declared = dict(cls.__annotations__)
    added = {"efficiency": param_sections(), "benchmark": suite_sections()}
    annotations = {}
    for name, tp in declared.items():
        annotations[name] = tp
        for extra, section_cls in added.get(name, {}).items():
            if extra not in declared:
                annotations[extra] = section_cls
                setattr(cls, extra, section(section_cls))
    cls.__annotations__ = annotations
    return cls


@dataclass
@with_registered_sections
class ExperimentConfig:
    """The whole configuration of one run (see the module docstring)."""

    method: str = option(f"unlearning method ({', '.join(METHODS)}); the default {DEFAULT_METHOD} is ATWU with the "
                         "log-loss-fit scorer (docs/method.md), atwu the atwu section as given", DEFAULT_METHOD)
    methods: list[str] = option("run several methods on the same target ('all' for every method); overrides --method",
                                factory=list)
    weights: str = option("token weights for the named methods' losses: atwu (ATWU's learned scores), an ATWU "
                          f"variant's, seul, truth, truth_facts; runs <method>+<weights> ({', '.join(SOURCES)})", "")
    tuned: bool = option("run each method with the hyper-parameters tuned for it on this benchmark (python -m "
                         "atwu_fast.tune; values you set yourself win); false: the sections' defaults", True)
    output_dir: str = option("where results are written (default: runs/<method>-<time>)", "")
    print_config: bool = option("print every option each method would run with, and where each value comes from "
                                "(its default, fixed by the method, tuned for it on this benchmark, or yours), then "
                                "exit", False)
    resume: bool = option("continue an interrupted run in --output-dir from its latest checkpoints", False)
    cache_dir: str = option("where the tokenizers and tiny models are cached (embedded benchmark, --model tiny)",
                            ".cache/atwu_fast")
    threads: int = option("torch CPU threads (0: torch default)", 0)
    train: TrainConfig = section(TrainConfig)
    efficiency: EfficiencyConfig = section(EfficiencyConfig)
    # here: the registered methods' sections (atwu, wga, npo, ...)
    benchmark: BenchmarkConfig = section(BenchmarkConfig)
    # here: the benchmarks' own sections (data, tokenizer, model, pretrain, eval, tofu, tiny, rwku, jsonl)
    log: LogConfig = section(LogConfig)

    def method_list(self) -> list[str]:
        """The methods this run trains (``--methods all``: every registered method, plug-in pairs
        included); with ``--weights S`` each named method runs as ``<method>+S``."""
        names = self.methods or [self.method]
        if names == ["all"]:
            return list(METHODS)
        return [f"{name}+{self.weights}" if self.weights and "+" not in name else name for name in names]

    def validate(self) -> None:
        names = self.methods or [self.method]
        check(not self.weights or self.weights in SOURCES,
              f"unknown weight source '{self.weights}'; choose from {', '.join(SOURCES)}")
        check(not (self.weights and names == ["all"]), "--weights applies to named methods, not to --methods all")
        if names != ["all"]:
            for name in self.method_list():
                try:
                    get_method(name)
                except KeyError as exc:
                    close = difflib.get_close_matches(name, list(METHODS), n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close and "+" not in name else ""
                    raise ConfigError(f"{exc.args[0]}{hint}") from None
        check(self.threads >= 0, "threads must be >= 0")
        if self.benchmark.model == TINY:
            check(self.benchmark.name == "tofu", f"--model {TINY} is the laptop-scale TOFU protocol: use it with "
                                                 "--benchmark tofu")
            check(not self.tofu.retain_logs, f"--model {TINY} evaluates its own retain model; --retain-logs does "
                                             "not apply")
        check_sections_apply(self)
