"""The ``tune`` section: what ``python -m atwu_fast.tune`` searches, for how long, and how it judges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import check, option
from ..unlearn.experiment import ExperimentConfig


@dataclass
class TuneOptions:
    """Hyper-parameter search (Optuna TPE) of one method: ranges beside each method's Params."""

    trials: int = option("trials of the study in all (a resumed study runs only the missing ones)", 20)
    objective: Literal["mu_at_fq", "es_gap"] = option(
        "mu_at_fq: model utility among trials with forget quality >= fq_level (below it, closer to the level "
        "is better); es_gap: -|extraction strength on forget - the retain model's| (0 is the retain model's)",
        "mu_at_fq")
    fq_level: float = option("the forget quality a mu_at_fq trial must reach", 0.05)
    seeds: list[int] = option("tuning seeds: the objective is their mean (a seed of the embedded benchmark is a "
                              "fresh world and model pair)", factory=lambda: [1])
    eval_seeds: list[int] = option("fresh seeds the best setting is re-evaluated on (with generation)",
                                   factory=lambda: [0, 2, 3, 4, 5, 6, 7, 8])
    quick: bool = option("trials evaluate without generation (forget quality and model utility from likelihoods "
                         "only; the embedded benchmark and TOFU)", True)
    storage: str = option("Optuna storage (default: sqlite:///<output-dir>/study.db): rerun to resume", "")
    study: str = option("study name (default: <benchmark>-<method>)", "")
    sampler_seed: int = option("TPE sampler seed", 0)
    startup_trials: int = option("random trials before TPE models the results", 5)
    record: str = option("a tuned-values file (JSON) to record the best setting in, under this method's name "
                         "(e.g. the benchmark's shipped one: atwu_fast/suites/synthetic/tuned.json)", "")

    def validate(self) -> None:
        check(self.trials >= 1, "tune.trials must be >= 1")
        check(0.0 < self.fq_level <= 1.0, "tune.fq_level must be in (0, 1]")
        check(bool(self.seeds), "tune.seeds must not be empty")
        check(not set(self.seeds) & set(self.eval_seeds), "tune.eval_seeds must be fresh: none of tune.seeds")
        check(self.startup_trials >= 1, "tune.startup_trials must be >= 1")


@dataclass
class TuneConfig(ExperimentConfig):
    tune: TuneOptions = field(default_factory=TuneOptions)
