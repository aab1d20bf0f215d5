"""One method's hyper-parameter study: Optuna's TPE sampler over the method's declared ranges
(:meth:`atwu_fast.methods.base.Method.search_space`), each trial an unlearning run per tuning seed through
the one driver (the same ``prepare`` / ``reference_rows`` / ``run_method`` as ``python -m
atwu_fast.unlearn``), the objective their mean. A diverged run (or a non-finite metric) prunes the trial.
The study lives in an Optuna storage (SQLite by default), so rerunning the command resumes it. The best
setting is then re-evaluated on fresh seeds, with generation.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from ..config import merge
from ..config.options import dotted_to_nested
from ..config.search import Choice, Float, Int, Space
from ..methods import get_method
from ..model.distributed import SINGLE
from ..suites import make_suite
from ..train.trainer import DivergenceError
from ..unlearn.driver import RETAIN_MODEL, Run, prepare, reference_rows, run_method


def suggest(trial: optuna.Trial, name: str, space: Space):
    if isinstance(space, Float):
        return trial.suggest_float(name, space.low, space.high, log=space.log)
    if isinstance(space, Int):
        return trial.suggest_int(name, space.low, space.high, log=space.log)
    if isinstance(space, Choice):
        return trial.suggest_categorical(name, list(space.options))
    raise TypeError(f"unknown search space {space!r}")


def objective_value(metrics: dict, reference: dict, opts) -> float:
    """The value a trial's run scores (larger is better; see ``TuneOptions.objective``)."""
    if opts.objective == "es_gap":
        retain = reference.get("models", {}).get(RETAIN_MODEL, {}).get("extraction_strength")
        es = metrics.get("extraction_strength")
        if retain is None or es is None:
            raise ValueError("the es_gap objective needs a retain model's extraction strength (a benchmark with a "
                             "retain model) and the run's")
        return -abs(es - retain)
    fq, mu = metrics.get("forget_quality"), metrics.get("model_utility")
    if fq is None or mu is None or not (math.isfinite(fq) and math.isfinite(mu)):
        raise optuna.TrialPruned("no forget quality or model utility")
    if fq >= opts.fq_level:
        return mu
    # below the level: under every feasible trial (mu >= 0), and the closer to the level the better
    return -1.0 - (math.log10(opts.fq_level) - math.log10(max(fq, 1e-300))) / 100.0


@dataclass
class SeedContext:
    run: Run  # the prepared suite of this seed, its config and its forget-quality reference
    reference: dict  # its reference rows (retain / target models)


@dataclass
class Tuner:
    """Runs ``method`` with sampled values on prepared seeds (each prepared once and cached)."""

    cfg: object  # the TuneConfig
    method: str
    scratch: Path
    log: Callable[[str], None] = print
    contexts: dict = field(default_factory=dict)

    def context(self, seed: int, quick: bool) -> SeedContext:
        key = (seed, quick)
        if key not in self.contexts:
            probe = make_suite(self.cfg)
            overrides = {**probe.seed_overrides(seed), **(probe.quick_overrides() if quick else {})}
            cfg = merge(self.cfg, dotted_to_nested(overrides), where=f"seed {seed}")
            suite = make_suite(cfg)
            prepare(suite, SINGLE, lambda m: self.log(f"  {m}"))
            run = Run(cfg, suite, self.scratch, quiet=True)
            self.contexts[key] = SeedContext(run, reference_rows(run))
        return self.contexts[key]

    def run(self, seed: int, values: dict, quick: bool) -> dict:
        """The method's metrics with ``values`` (dotted keys) on ``seed``; DivergenceError propagates."""
        ctx = self.context(seed, quick)
        cfg = merge(ctx.run.cfg, dotted_to_nested(values), where="trial values")
        out = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            return run_method(self.method, dataclasses.replace(ctx.run, cfg=cfg, out_dir=out))
        finally:
            shutil.rmtree(out, ignore_errors=True)


def study_objective(tuner: Tuner, opts) -> Callable[[optuna.Trial], float]:
    space = get_method(tuner.method).search_space()

    def objective(trial: optuna.Trial) -> float:
        values = {name: suggest(trial, name, rng) for name, rng in space.items()}
        scores = []
        for seed in opts.seeds:
            try:
                metrics = tuner.run(seed, values, opts.quick)
            except DivergenceError as exc:
                raise optuna.TrialPruned(f"diverged: {exc}") from None
            score = objective_value(metrics, tuner.context(seed, opts.quick).reference, opts)
            trial.set_user_attr(f"seed{seed}", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            scores.append(score)
        value = sum(scores) / len(scores)
        tuner.log(f"trial {trial.number}: {value:.4f}  " + ", ".join(f"{k}={v:.3g}" for k, v in values.items()))
        return value

    return objective


def open_study(opts, name: str, storage: str) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=opts.sampler_seed, n_startup_trials=opts.startup_trials)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                               load_if_exists=True)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.trials if t.state in states]


def run_study(tuner: Tuner, opts, study: optuna.Study) -> None:
    """Run the trials the study is missing (all of them the first time)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    missing = opts.trials - len(finished(study))
    if missing > 0:
        study.optimize(study_objective(tuner, opts), n_trials=missing, catch=())


def best_values(study: optuna.Study) -> dict:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ValueError("no trial of the study completed (every one diverged?): widen or shift the ranges")
    return dict(study.best_trial.params)


def reevaluate(tuner: Tuner, values: dict, seeds: list[int]) -> dict[int, dict]:
    """The best setting's full metrics (with generation) on fresh seeds; a diverged seed is recorded."""
    out = {}
    for seed in seeds:
        try:
            out[seed] = tuner.run(seed, values, quick=False)
        except DivergenceError as exc:
            out[seed] = {"diverged": str(exc)}
    return out
