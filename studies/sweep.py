"""``python -m studies.sweep GRID --output-dir DIR``: run a named grid in-process and write tables.

A grid is methods (each a label, a registered method and its config overrides) × model learning
rates × seeds × generator/model variants. Every run goes through the same engine functions as
``python -m atwu_fast.unlearn`` (the driver's ``prepare``, ``reference_rows``, ``run_method``): one process, the
cached tokenizer/models reused, one target/retain pair per (variant, seed). A seed sets the
generator seed, the tiny models' initialisation seed and the unlearning seed together
(``data.seed = model.seed = train.seed``), so each seed is a fresh data set and model pair.

Each finished run appends one line to ``DIR/runs.jsonl``; a re-run skips what is there (resume).
``DIR/<grid>.md`` holds mean ± std over seeds: per variant, the training-free rankers on the target
model and, per learning rate, log10 forget quality, model utility and span AUROC/AP. ``--list``
prints the grids. Everything is a pure function of the grid, so the same command regenerates the
same tables (up to CPU floating-point nondeterminism).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from atwu_fast.config.options import dotted_to_nested, merge
from atwu_fast.data.io import atomic_write_text
from atwu_fast.methods import METHODS
from atwu_fast.tune.config import TuneOptions
from atwu_fast.unlearn.experiment import ExperimentConfig

# --------------------------------------------------------------------------- grids

TUNED = "tuned"  # a grid learning rate meaning: each method's tuned values on the benchmark (its lr among them)


def log10(value):
    return None if value is None else math.log10(max(float(value), 1e-300))


METRIC_COLUMNS = [
    ("log10 FQ", lambda m: log10(m.get("forget_quality"))),
    ("MU", lambda m: m.get("model_utility")),
    ("AUROC end", lambda m: m.get("span_auroc")),
    ("AUROC avg", lambda m: m.get("span_auroc_avg")),
    ("AP end", lambda m: m.get("span_ap")),
    ("AUROC all-facts end", lambda m: m.get("span_auroc_all")),
]


FRONTIER_LEVELS = (-12.0, -10.0, -8.0, -6.0, -4.0, -3.0, -2.0)  # log10 forget quality


@dataclass
class Grid:
    methods: list[tuple[str, str, dict]]  # (label, method, dotted overrides)
    lrs: list[float]
    seeds: list[int]
    variants: dict[str, dict] = field(default_factory=lambda: {"default": {}})
    base: dict = field(default_factory=dict)
    quick: bool = True  # the benchmark's likelihood-only evaluation (no generation): FQ and MU, not accuracy/ROUGE
    doc: str = ""
    baseline: str | None = None  # a method label: add per-seed paired differences against it
    more_baselines: tuple[str, ...] = ()  # further labels to pair against (one set of tables each)
    levels: tuple[float, ...] = FRONTIER_LEVELS  # log10 FQ levels of the equal-forget-quality tables
    columns: list = None  # the per-lr table's (name, metric[, summary]) columns (default METRIC_COLUMNS)
    method_lrs: dict[str, list[float]] = field(default_factory=dict)  # label -> its own lrs (default: lrs)
    intervals: bool = False  # per-lr cells as mean [95 % t-interval] instead of mean ± std
    controls: tuple[str, ...] = ()  # labels a user cannot run (ground-truth masks): a second frontier leaves them out

    def lrs_of(self, label: str) -> list:
        """The learning rates a method runs at: its own range where one is set (methods whose forget
        quality moves at different scales), else the grid's."""
        return self.method_lrs.get(label, self.lrs)

    @property
    def all_lrs(self) -> list:
        """Every learning rate some method runs at, the grid's first, in increasing order."""
        extra = {lr for lrs in self.method_lrs.values() for lr in lrs} - set(self.lrs)
        return list(self.lrs) + sorted(extra)

    @property
    def runs(self) -> int:
        return sum(len(self.lrs_of(label)) for label, _, _ in self.methods) * len(self.seeds) * len(self.variants)

    @property
    def baselines(self) -> list[str]:
        return [b for b in (self.baseline, *self.more_baselines) if b]


CONTROLS = [
    ("atwu_frozen (g=0.5)", "atwu_frozen", {}),
    ("atwu_oracle (hard mask)", "atwu_oracle", {}),
    ("wga", "wga", {}),
    ("satimp", "satimp", {}),
]

ABLATIONS = [
    ("faithful (n=5, as specified)", "atwu_faithful", {}),
    ("n=1", "atwu_faithful", {"atwu.update_every": 1}),
    ("n=10", "atwu_faithful", {"atwu.update_every": 10}),
    ("joint", "atwu_faithful", {"atwu.schedule": "joint"}),
    ("n=1, reward_norm", "atwu_faithful", {"atwu.update_every": 1, "atwu.reward_norm": True}),
    ("n=1, reward_beta=1", "atwu_faithful", {"atwu.update_every": 1, "atwu.reward_beta": 1.0}),
    ("λ_H=0", "atwu_faithful", {"atwu.lambda_entropy": 0.0}),
    ("λ_P=0", "atwu_faithful", {"atwu.lambda_budget": 0.0}),
    ("λ_2=0", "atwu_faithful", {"atwu.lambda_l2": 0.0}),
    ("no_retain (α=0)", "atwu_faithful", {"atwu.alpha": 0.0}),
    ("score_position=predictor", "atwu_faithful", {"atwu.score_position": "predictor"}),
    ("saturation=raw", "atwu_faithful", {"atwu.saturation": "raw"}),
    ("pretrain 50 (faithful reward)", "atwu_faithful", {"atwu.pretrain_steps": 50}),
    ("pretrain 50, frozen (faithful reward)", "atwu_faithful", {"atwu.pretrain_steps": 50,
                                                                 "atwu.schedule": "frozen"}),
    ("contrast only, n=1", "atwu", {"atwu.lambda_reward": 0.0, "atwu.lambda_contrast": 1.0,
                                    "atwu.update_every": 1}),
    ("reward+contrast, n=1", "atwu", {"atwu.lambda_contrast": 1.0, "atwu.update_every": 1}),
    ("reward+contrast, n=5", "atwu", {"atwu.lambda_contrast": 1.0}),
    ("contrast, pretrain 50, frozen", "atwu", {"atwu.lambda_reward": 0.0, "atwu.lambda_contrast": 1.0,
                                               "atwu.pretrain_steps": 50, "atwu.schedule": "frozen"}),
    ("n=1, reward_beta=0 (no norm)", "atwu", {"atwu.update_every": 1, "atwu.reward_beta": 0.0}),
    ("n=5, norm, reward_beta=0", "atwu", {"atwu.reward_norm": True, "atwu.reward_beta": 0.0}),
    ("n=1, norm, reward_beta=0", "atwu", {"atwu.update_every": 1, "atwu.reward_norm": True, "atwu.reward_beta": 0.0}),
    ("n=1, norm, reward_beta=0, pretrain 50", "atwu", {"atwu.update_every": 1, "atwu.reward_norm": True,
                                                       "atwu.reward_beta": 0.0, "atwu.pretrain_steps": 50}),
    ("n=1, norm, reward_beta=0, pretrain 50, predictor", "atwu", {
        "atwu.update_every": 1, "atwu.reward_norm": True, "atwu.reward_beta": 0.0, "atwu.pretrain_steps": 50,
        "atwu.score_position": "predictor"}),
    ("n=1, norm, reward_beta=0, pretrain 50, λ_2=0.01", "atwu", {
        "atwu.update_every": 1, "atwu.reward_norm": True, "atwu.reward_beta": 0.0, "atwu.pretrain_steps": 50,
        "atwu.lambda_l2": 0.01}),
    ("learned (rb=0, norm, n=1, predictor)", "atwu", {
        "atwu.update_every": 1, "atwu.reward_norm": True, "atwu.reward_beta": 0.0,
        "atwu.score_position": "predictor"}),
    ("learned + pretrain 50, λ_H=0", "atwu", {
        "atwu.update_every": 1, "atwu.reward_norm": True, "atwu.reward_beta": 0.0, "atwu.pretrain_steps": 50,
        "atwu.score_position": "predictor", "atwu.lambda_entropy": 0.0}),
    ("learned + pretrain 50, scorer_lr 0.2", "atwu", {
        "atwu.update_every": 1, "atwu.reward_norm": True, "atwu.reward_beta": 0.0, "atwu.pretrain_steps": 50,
        "atwu.score_position": "predictor", "atwu.scorer_lr": 0.2}),
    ("atwu_nll (rb=0, norm, n=1, predictor, pretrain 50)", "atwu_nll", {}),
    ("atwu_frozen (g=0.5)", "atwu_frozen", {}),
]

MAIN = [("atwu_faithful", "atwu_faithful", {}), ("atwu_nll", "atwu_nll", {})]

# The log-loss fit study (docs/studies/scorer_study.md, "Log-loss fit"): atwu_logfit and one-change ablations of it.
# The ablations run plain `atwu` with atwu_logfit's settings spelled out (a variant fixes its fields).
LOGFIT = {"atwu.lambda_reward": 0.0, "atwu.lambda_fit": 1.0, "atwu.lambda_entropy": 0.0, "atwu.lambda_budget": 0.0,
          "atwu.lambda_l2": 0.01, "atwu.update_every": 1, "atwu.score_position": "predictor",
          "atwu.pretrain_steps": 50}
LOGFIT_ABLATIONS = [
    ("atwu_logfit", "atwu_logfit", {}),
    ("logfit settings via atwu (= atwu_logfit)", "atwu", LOGFIT),
    ("logfit, no pretraining", "atwu", {**LOGFIT, "atwu.pretrain_steps": 0}),
    ("logfit, λ_2=1", "atwu", {**LOGFIT, "atwu.lambda_l2": 1.0}),
    ("logfit, token position", "atwu", {**LOGFIT, "atwu.score_position": "token"}),
    ("logfit, n=5", "atwu", {**LOGFIT, "atwu.update_every": 5}),
    ("logfit + entropy and budget (λ_H=1, λ_P=10)", "atwu", {**LOGFIT, "atwu.lambda_entropy": 1.0,
                                                              "atwu.lambda_budget": 10.0}),
    ("logfit + atwu_nll reward", "atwu", {**LOGFIT, "atwu.lambda_reward": 1.0, "atwu.reward_beta": 0.0,
                                          "atwu.reward_norm": True}),
    ("logfit, pretrain 50, frozen", "atwu", {**LOGFIT, "atwu.schedule": "frozen"}),
]

def tuned_except_lr(method: str) -> dict:
    """A method's shipped tuned values on the embedded benchmark without the model learning rate (a grid
    then sweeps the rate around the tuned loss and scorer values). Read from the shipped file itself, not
    through ``SyntheticSuite.tuned_file``, which a caller may have switched off when this module is imported."""
    from atwu_fast.suites.synthetic import TUNED_FILE

    tuned = json.loads(TUNED_FILE.read_text())["methods"][method]
    return {k: v for k, v in tuned.items() if k != "train.lr"}


# The scorer-drift study (docs/studies/scorer_drift.md): atwu_logfit with one change to what its scores see.
SCORER_DRIFT = [
    ("atwu_logfit", "atwu_logfit", {}),
    ("logfit, scorer frozen after pre-training", "atwu_logfit", {"atwu.schedule": "frozen"}),
    ("logfit, fitted to the target's NLL", "atwu_logfit", {"atwu.scorer_labels": "target"}),
    ("logfit, scores of the target's hidden states", "atwu_logfit", {"atwu.score_from": "target"}),
]
SHARP_TARGET_SCORES = ("logfit, sharpened (k=4) scores of the target's hidden states", "atwu_logfit",
                       {"atwu.score_from": "target", "atwu.score_sharpness": 4.0})

# TOFU's whole protocol at laptop scale (--model tiny, docs/studies/tofu_study.md): the real TOFU data, a fresh tiny
# target/retain pair per seed (tiny.model.seed), no generation (model utility from the 6 probability and
# truth-ratio values), every method, the ATWU variants, the frozen control and the target-word hard mask.
# Learning rates: the weighted, saturating losses from the shared default up (1e-3 x 60 steps barely forgets here),
# the sample-level ones from it down (at 1e-3 gradient ascent already destroys the tiny model: FQ 1e-239, MU 0;
# NPO and SimNPO do not, so they also run at the higher ones).
TOFU_TINY = {"benchmark.name": "tofu", "benchmark.data_dir": "data/tofu", "benchmark.model": "tiny"}  # see --tofu-dir
TOFU_METHODS = [
    ("atwu_faithful", "atwu_faithful", {}), ("atwu_nll", "atwu_nll", {}), ("atwu_logfit", "atwu_logfit", {}),
    ("atwu_frozen (g=0.5)", "atwu_frozen", {}), ("atwu_oracle (target words)", "atwu_oracle", {}),
    ("wga", "wga", {}), ("satimp", "satimp", {}),
    ("grad_ascent", "grad_ascent", {}), ("grad_diff", "grad_diff", {}), ("npo", "npo", {}), ("simnpo", "simnpo", {}),
]
SAMPLE_LEVEL_LRS = {**{label: [1e-4, 3e-4, 1e-3] for label in ("grad_ascent", "grad_diff")},
                    **{label: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2] for label in ("npo", "simnpo")}}  # they collapse later
# log10 FQ levels: with 400 forget rows the KS p-value of any model short of the retain model is tiny
TOFU_LEVELS = (-45.0, -40.0, -35.0, -30.0, -25.0, -20.0, -15.0, -10.0)

# The comparison of tuned methods: every registered method and plug-in, on the fresh seeds the tune command
# re-evaluates on (its --tune.eval_seeds default), with the leak metric (it needs generation).
COMPARED = list(METHODS)
ORACLES = ("atwu_oracle", "atwu_oracle_facts")  # ground-truth masks: controls, not methods a user can run
# The default and the methods nearest it (issue #32's item 3), re-tuned together on the converged tiny-TOFU pairs
NEAREST = ("atwu_logfit", "wga", "npo", "rmu", "dpo", "atwu_frozen", "atwu_oracle_facts")
TOFU_FQ_LEVEL = 1e-15  # the tiny-TOFU studies' --tune.fq_level: visible forgetting at laptop scale (target ≈ 1e-50)
# Paired per-seed differences of the comparison: the default against every method, and each ATWU plug-in (and
# learned scores) against what it plugs into (the frozen-score control for learned scores)
COMPARE_BASELINES = dict(baseline="atwu_logfit", more_baselines=("atwu_frozen", "grad_diff", "idk_dpo", "npo", "rmu"))


def reached(level: float):
    """A column: on how many seeds the run's forget quality reaches ``level`` (``k/n``)."""
    def count(values: list) -> str:
        known = [v for v in values if v is not None]
        return f"{int(sum(known))}/{len(known)}" if known else "-"

    return (f"FQ ≥ {level:g}", lambda m: None if m.get("forget_quality") is None else float(m["forget_quality"] >= level),
            count)


def compare_columns(level: float) -> list:
    return [*METRIC_COLUMNS[:2], reached(level), ("J_W", lambda m: m.get("leak_worst")),
            ("J_avg", lambda m: m.get("leak_retain")), ("span AUROC", METRIC_COLUMNS[2][1])]

GRIDS: dict[str, Grid] = {
    "headline": Grid(MAIN + [c for c in CONTROLS if c[1] != "wga"], lrs=[1e-3, 3e-3, 1e-2], seeds=[0, 1, 2],
                     doc="faithful vs improved ATWU vs controls, 3 model/data seeds, 3 learning rates"),
    "ablations": Grid(ABLATIONS, lrs=[1e-3], seeds=[0],
                      doc="every ablation of the method as specified and the scorer-objective study, default generator, lr 1e-3"),
    "robustness": Grid(MAIN + [("atwu_logfit", "atwu_logfit", {}), ("atwu_frozen (g=0.5)", "atwu_frozen", {}),
                               ("satimp", "satimp", {})],
                       lrs=[1e-3, 3e-3, 1e-2], seeds=[0, 1, 2], baseline="atwu_faithful",
                       variants={
                           "templates_per_fact=1": {"data.templates_per_fact": 1},
                           "unique_share=0.7": {"data.unique_share": 0.7},
                           "hidden_size=256": {"model.hidden_size": 256, "model.intermediate_size": 768},
                       },
                       doc="other generator settings and a wider model (settings fixed before any result)"),
    "logfit": Grid([("atwu_logfit", "atwu_logfit", {})], lrs=[1e-3, 3e-3, 1e-2], seeds=[0, 1, 2],
                   doc="the log-loss fit scorer (atwu_logfit), 3 seeds, 3 learning rates; compare with `headline`"),
    "logfit_frontier": Grid([("atwu_faithful", "atwu_faithful", {}), ("atwu_logfit", "atwu_logfit", {}),
                             ("atwu_frozen (g=0.5)", "atwu_frozen", {})], lrs=[5e-3, 7e-3], seeds=[0, 1, 2],
                            doc="faithful, atwu_logfit and frozen between lr 3e-3 and 1e-2: the FQ-MU frontier "
                                "(compare with `headline` and `logfit`)"),
    "logfit_mean": Grid([("atwu_logfit, score mean 0.5", "atwu", {**LOGFIT, "atwu.score_mean_target": 0.5})],
                        lrs=[1e-3, 3e-3, 5e-3, 7e-3, 1e-2], seeds=[0, 1, 2],
                        doc="atwu_logfit with the model step's scores rescaled to batch mean 0.5 (the frozen "
                            "control's level): ranking from the scorer, total push fixed"),
    "logfit_magnitude": Grid([("atwu_logfit, score mean 0.44", "atwu", {**LOGFIT, "atwu.score_mean_target": 0.44}),
                              ("atwu_frozen (g=0.44)", "atwu_frozen", {"atwu.init_score": 0.44})],
                             lrs=[1e-2], seeds=[0, 1, 2],
                             doc="lr 1e-2 diagnostic: atwu_logfit's ranking and a frozen control, both at "
                                 "faithful ATWU's measured mean score (0.44)"),
    "logfit_ablations": Grid(LOGFIT_ABLATIONS, lrs=[1e-3], seeds=[0],
                             doc="one-change ablations of atwu_logfit, default generator, lr 1e-3"),
    "paired": Grid([("atwu_faithful", "atwu_faithful", {}), ("atwu_logfit", "atwu_logfit", {}),
                    ("atwu_frozen (g=0.5)", "atwu_frozen", {}), ("atwu_oracle (unique spans)", "atwu_oracle", {}),
                    ("atwu_oracle_facts (all fact spans)", "atwu_oracle_facts", {})],
                   lrs=[1e-3, 3e-3, 5e-3, 7e-3, 1e-2], seeds=list(range(8)), baseline="atwu_faithful",
                   doc="atwu_logfit, the frozen control and two hard-mask oracles vs faithful ATWU, paired per "
                       "seed: 8 model/data seeds (0-7) at five learning rates, the test of 'unlearns at least as "
                       "well'"),
    "tofu": Grid(TOFU_METHODS, lrs=[1e-3, 3e-3, 1e-2], seeds=[0, 1, 2], base=TOFU_TINY,
                 method_lrs=SAMPLE_LEVEL_LRS, baseline="grad_diff",
                 more_baselines=("npo", "simnpo"),
                 levels=TOFU_LEVELS,
                 doc="laptop-scale TOFU (real data, forget10, tiny models fine-tuned per seed): every method, the "
                     "ATWU variants, the frozen control and the target-word hard mask, paired against the "
                     "sample-level methods"),
    "compare": Grid([(name, name, {}) for name in COMPARED], lrs=[TUNED], seeds=TuneOptions().eval_seeds,
                    quick=False, columns=compare_columns(TuneOptions().fq_level), intervals=True, controls=ORACLES,
                    **COMPARE_BASELINES,
                    doc="every method at its shipped tuned values (package defaults where none are tuned) on "
                        "the embedded benchmark, 8 fresh seeds (none a tuning seed), with generation: the "
                        "comparison table"),
    "compare_tofu": Grid([(name, name, {}) for name in COMPARED], lrs=[TUNED], seeds=TuneOptions().eval_seeds,
                         base=TOFU_TINY, quick=False, columns=compare_columns(TOFU_FQ_LEVEL), intervals=True,
                         controls=ORACLES, **COMPARE_BASELINES,
                         doc="every method at its tuned values on TOFU at laptop scale (package defaults where none "
                             "are tuned), 8 fresh seeds (each a fresh tiny pair, fine-tuned once), with generation: "
                             "the comparison table on real text"),
    "compare_tofu_nearest": Grid([(name, name, {}) for name in NEAREST], lrs=[TUNED], seeds=TuneOptions().eval_seeds,
                                 base=TOFU_TINY, quick=False, columns=compare_columns(TOFU_FQ_LEVEL), intervals=True,
                                 controls=ORACLES, baseline="atwu_logfit", more_baselines=("wga",),
                                 doc="the default and the methods nearest it, each re-tuned on the converged tiny "
                                     "pairs (same budget for every method), on TOFU at laptop scale, 8 fresh seeds, "
                                     "with generation (#32 item 3)"),
    "scorer_drift": Grid(SCORER_DRIFT + [SHARP_TARGET_SCORES, ("wga", "wga", {})], lrs=[TUNED], seeds=[1, 9, 10, 11, 12, 13],
                         baseline="atwu_logfit", quick=False, columns=compare_columns(TuneOptions().fq_level),
                         intervals=True,
                         doc="why the learned scores lose selectivity at the tuned values (#32 item 2): the default, "
                             "its scorer frozen after pre-training, fitted to the target's NLL, or scoring the "
                             "target's hidden states, and WGA, at atwu_logfit's tuned values, on the tuning seeds "
                             "(1, 9) and exploration seeds 10-13 (the comparison's fresh seeds untouched)"),
    "scorer_drift_frontier": Grid(SCORER_DRIFT + [SHARP_TARGET_SCORES], lrs=[8e-4, 1.2e-3, 1.6e-3, 2.4e-3], seeds=[1, 9, 10, 11, 12, 13],
                                  base=tuned_except_lr("atwu_logfit"), baseline="atwu_logfit", quick=False,
                                  intervals=True,
                                  doc="the scorer-drift variants (the sharpened one added after scorer_drift) at "
                                      "atwu_logfit's tuned loss and scorer values over "
                                      "four model learning rates around its tuned one (1.6e-3): utility at equal "
                                      "forget quality, same seeds as scorer_drift"),
    "scorer_drift_fresh": Grid([("atwu_logfit", "atwu_logfit", {}), SHARP_TARGET_SCORES, ("wga", "wga", {}),
                                ("atwu_oracle_facts", "atwu_oracle_facts", {})],
                               lrs=[TUNED], seeds=TuneOptions().eval_seeds, quick=False,
                               columns=compare_columns(TuneOptions().fq_level), intervals=True,
                               controls=ORACLES, baseline="atwu_logfit", more_baselines=("wga",),
                               doc="the candidate chosen on scorer_drift's seeds (sharpened scores of the target's "
                                   "hidden states, at atwu_logfit's tuned values) against the default, WGA and the "
                                   "fact-mask oracle on the comparison's 8 fresh seeds"),
    "smoke": Grid([("atwu_faithful", "atwu_faithful", {}), ("atwu_frozen (g=0.5)", "atwu_frozen", {})],
                  lrs=[1e-3], seeds=[0], base={"train.steps": 3},
                  doc="a seconds-long check of the machinery"),
}


# --------------------------------------------------------------------------- running


def lr_text(lr: float | str) -> str:
    return lr if lr == TUNED else f"{lr:g}"


def run_key(variant: str, seed: int, lr: float | str, label: str) -> str:
    return f"{variant}|{seed}|{lr_text(lr)}|{label}"


def run_config(cfg, suite, method: str, over: dict, lr: float | str, where: str):
    """One run's config: ``cfg`` with the entry's overrides and learning rate, or with ``lr`` = TUNED the
    method's tuned values on the benchmark (every override, the grid's base and the entry's, wins)."""
    if lr != TUNED:
        return merge(cfg, dotted_to_nested({**over, "train.lr": lr}), where=where), {}
    from atwu_fast.unlearn.resolve import resolve

    resolved = resolve(merge(cfg, dotted_to_nested(over), where=where), suite, method, frozenset(over))
    return resolved.cfg, resolved.tuned


def run_overrides(grid: Grid, variant_over: dict, seed: int) -> dict:
    """The dotted overrides of one (variant, seed) pair: the grid's base and the variant's, then what the
    benchmark itself says a seed is (``Suite.seed_overrides``) and, for a quick grid, its likelihood-only
    evaluation (``Suite.quick_overrides``) — the same definitions ``python -m atwu_fast.tune`` uses."""
    from atwu_fast.suites import make_suite

    over = {**grid.base, **variant_over}
    probe = make_suite(merge(ExperimentConfig(), dotted_to_nested(over), where="grid"))
    return {**(probe.quick_overrides() if grid.quick else {}), **over, **probe.seed_overrides(seed)}


def seed_keys(grid: Grid) -> list[str]:
    """The options a seed of ``grid`` sets (those whose value follows the seed)."""
    zero, one = run_overrides(grid, {}, 0), run_overrides(grid, {}, 1)
    return sorted(key for key in zero if zero[key] != one.get(key))


def load_runs(path: Path) -> dict[str, dict]:
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                runs[row["key"]] = row
    return runs


def shard_pairs(grid: Grid, shard: tuple[int, int]) -> list[tuple[str, dict, int]]:
    """The (variant, overrides, seed) pairs shard ``(k, n)`` runs: every n-th from the k-th."""
    pairs = [(v, over, seed) for v, over in grid.variants.items() for seed in grid.seeds]
    return pairs[shard[0]::shard[1]]


def run_grid(name: str, grid: Grid, out_dir: Path, cache_dir: str, threads: int, log=print,
             shard: tuple[int, int] = (0, 1)) -> dict[str, dict]:
    """Run the grid's missing runs; with ``shard=(k, n)`` only every n-th (variant, seed) pair from
    the k-th on, so n processes can share one output directory (appends are single short lines)."""
    from atwu_fast.model.distributed import SINGLE
    from atwu_fast.model.loading import quiet_libraries
    from atwu_fast.suites import make_suite
    from atwu_fast.unlearn.driver import Run, prepare, reference_rows, run_method

    if threads:
        torch.set_num_threads(threads)
    quiet_libraries()
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_path = out_dir / "runs.jsonl"
    runs = load_runs(runs_path)
    scratch = Path(tempfile.mkdtemp(prefix="atwu-sweep-"))
    try:
        for variant, variant_over, seed in shard_pairs(grid, shard):
            todo = [(lr, m) for lr in grid.all_lrs for m in grid.methods if lr in grid.lrs_of(m[0])
                    if run_key(variant, seed, lr, m[0]) not in runs]
            ref_key = run_key(variant, seed, 0.0, "__reference__")
            if not todo and ref_key in runs:
                continue
            base = {**run_overrides(grid, variant_over, seed), "cache_dir": cache_dir}
            cfg = merge(ExperimentConfig(), dotted_to_nested(base), where=f"grid {name}")
            suite = make_suite(cfg)
            prepare(suite, SINGLE, lambda m: log(f"  {m}"))
            shared = Run(cfg, suite, scratch, quiet=True)
            reference, retain_r = split_reference(reference_rows(shared))
            if ref_key not in runs:
                runs[ref_key] = append(runs_path, {"key": ref_key, "variant": variant, "seed": seed, "lr": 0.0,
                                                   "label": "__reference__", "reference": reference})
            for lr, (label, method, over) in todo:
                run_cfg, tuned = run_config(cfg, suite, method, over, lr, label)
                t0 = time.perf_counter()
                run_dir = scratch / f"run{len(runs)}"
                metrics = run_method(method, Run(run_cfg, suite, run_dir, retain=shared.retain, quiet=True))
                trajectory = checkpoint_trajectory(run_dir / method / "history.json")
                shutil.rmtree(run_dir, ignore_errors=True)
                key = run_key(variant, seed, lr, label)
                runs[key] = append(runs_path, {"key": key, "variant": variant, "seed": seed, "lr": lr,
                                               "label": label, "method": method, "overrides": over,
                                               "tuned": tuned, "metrics": metrics, "checkpoints": trajectory})
                log(f"{variant} seed {seed} lr {lr_text(lr)} {label}: FQ {metrics['forget_quality']:.2e} "
                    f"MU {metrics['model_utility']:.3f} AUROC end {fmt(metrics.get('span_auroc'))} "
                    f"avg {fmt(metrics.get('span_auroc_avg'))}  ({time.perf_counter() - t0:.0f}s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return runs


TRAJECTORY_STEP_KEYS = ("forget_nll", "retain_nll", "score_mean", "score_frac")


def checkpoint_trajectory(history_file: Path) -> list[dict]:
    """Per evaluation checkpoint of a run: its step, the span alignment of the method's token scores
    (``span_auroc``, ``span_auroc_all``) and, from that training step's statistics, the forget and
    retain NLL and the share of forget tokens scored above 0.5 (where the method has scores)."""
    if not history_file.exists():
        return []
    history = json.loads(history_file.read_text())
    steps = {s["step"]: s for s in history.get("steps", [])}
    out = []
    for c in history.get("span_checkpoints") or []:
        stats = steps.get(c["step"], {})
        out.append({"step": c["step"], "span_auroc": c.get("span_auroc"), "span_auroc_all": c.get("span_auroc_all"),
                    **{k: stats[k] for k in TRAJECTORY_STEP_KEYS if k in stats}})
    return out


def split_reference(out) -> tuple[dict, np.ndarray]:
    """``reference_rows``'s answer as (reference without the raw ratios, retain forget truth ratios)."""
    if isinstance(out, tuple):
        return out
    reference = {k: v for k, v in out.items() if k != "retain_forget_truth_ratios"}
    return reference, np.asarray(out["retain_forget_truth_ratios"])


def append(path: Path, row: dict) -> dict:
    from atwu_fast.data.io import _clean_nans

    with path.open("a") as f:
        f.write(json.dumps(_clean_nans(row)) + "\n")
    return row


def fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


# --------------------------------------------------------------------------- tables


def finite(values: list) -> list[float]:
    """The values that are numbers (not None, not NaN), as floats."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_std(values: list) -> str:
    vals = finite(values)
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def t_half_width(values: list[float]) -> float:
    """Half-width of the mean's 95 % t-interval: t(0.975, n−1) · s / √n (n ≥ 2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1)) * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def mean_interval(values: list) -> str:
    """Mean and its 95 % t-interval over seeds, ``mean [lo, hi]`` (the value alone for one seed)."""
    vals = finite(values)
    if len(vals) < 2:
        return mean_std(vals)
    mean, half = float(np.mean(vals)), t_half_width(vals)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def tuned_text(values: dict | None) -> str:
    """The tuned values a run used, compactly (``defaults`` when the method has none on the benchmark)."""
    if not values:
        return "defaults"
    return ", ".join(f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
                     for k, v in sorted(values.items()))


def tables(name: str, grid: Grid, runs: dict[str, dict]) -> str:
    lines = [f"# Sweep `{name}`", "", grid.doc, "",
             f"Seeds ({' = '.join(seed_keys(grid))}): {grid.seeds}; "
             f"{'mean [95 % t-interval]' if grid.intervals else 'mean ± sample std'} over seeds "
             f"(n = {len(grid.seeds)}). Base overrides: `{grid.base}`"
             f"{' (quick evaluation: no generation)' if grid.quick else ''}. Span AUROC/AP: learned (or fixed) token "
             "weights vs author-unique fact tokens of the forget set (AUROC all-facts: vs every fact token); "
             "'end' after the last step, 'avg' the mean over the evaluation checkpoints.", ""]
    for variant, over in grid.variants.items():
        lines += [f"## Variant `{variant}` {over or ''}".rstrip(), ""]
        refs = [runs.get(run_key(variant, s, 0.0, "__reference__")) for s in grid.seeds]
        refs = [r["reference"] for r in refs if r]
        if refs:
            lines += ["Training-free rankers on the target model:", "",
                      "| ranker | AUROC unique | AP unique | AUROC all facts |", "|---|---|---|---|"]
            for ranker in refs[0]["rankers"]:
                vals = [r["rankers"][ranker] for r in refs]
                lines.append(f"| {ranker} | {mean_std([v['span_auroc'] for v in vals])} | "
                             f"{mean_std([v['span_ap'] for v in vals])} | "
                             f"{mean_std([v['span_auroc_all'] for v in vals])} |")
            models = refs[0]["models"]
            for model in models:
                vals = [r["models"][model] for r in refs]
                lines.append("")
                lines.append(f"{model}: MU {mean_std([v.get('model_utility') for v in vals])}, log10 FQ "
                             f"{mean_std([log10(v.get('forget_quality')) for v in vals])}")
            lines.append("")
        columns = grid.columns or METRIC_COLUMNS
        summary = mean_interval if grid.intervals else mean_std
        for lr in grid.all_lrs:
            tuned, means = lr == TUNED, {}
            lines += [f"### lr {lr_text(lr)}", "", "| method | n | " + ("tuned values | " if tuned else "") +
                      " | ".join(c[0] for c in columns) + " |", "|---|---|" + "---|" * (len(columns) + tuned)]
            for label, _, _ in grid.methods:
                found = [r for r in (runs.get(run_key(variant, s, lr, label)) for s in grid.seeds) if r]
                if not found:
                    continue
                cells = [(c[2] if len(c) > 2 else summary)([c[1](r["metrics"]) for r in found]) for c in columns]
                if tuned:
                    cells.insert(0, tuned_text(found[0].get("tuned")))
                lines.append(f"| {label} | {len(found)} | " + " | ".join(cells) + " |")
                means[label] = (mean_of([log10(r["metrics"].get("forget_quality")) for r in found]),
                                mean_of([r["metrics"].get("model_utility") for r in found]))
            lines += ["", f"Frontier (no other method has both a higher mean log10 FQ and a higher mean MU): "
                          f"{', '.join(pareto(means)) or '-'}"]
            if grid.controls:
                usable = {k: v for k, v in means.items() if k not in grid.controls}
                lines += ["", f"Frontier without the controls ({', '.join(grid.controls)}): "
                              f"{', '.join(pareto(usable)) or '-'}"]
            lines.append("")
    return "\n".join(lines)


def mean_of(values: list) -> float | None:
    vals = finite(values)
    return float(np.mean(vals)) if vals else None


def pareto(points: dict[str, tuple]) -> list[str]:
    """The labels whose (x, y) no other point beats in both coordinates (ties keep both), best y first."""
    valid = {k: p for k, p in points.items() if None not in p}
    front = [k for k, (x, y) in valid.items()
             if not any(ox > x and oy > y for o, (ox, oy) in valid.items() if o != k)]
    return sorted(front, key=lambda k: -valid[k][1])


def paired_deltas(base: list, other: list) -> tuple[float, float, float, int] | None:
    """Mean, sample std and 95 % t-interval half-width of the per-seed differences other − base,
    and how many are ≥ 0 (``None`` with fewer than two complete pairs)."""
    deltas = [o - b for b, o in zip(base, other) if b is not None and o is not None]
    if len(deltas) < 2:
        return None
    return float(np.mean(deltas)), float(np.std(deltas, ddof=1)), t_half_width(deltas), sum(d >= 0 for d in deltas)


def delta_cell(d, digits: int = 3) -> list[str]:
    """``paired_deltas``'s answer as table cells: mean ± std, the 95 % interval."""
    if d is None:
        return ["-", "-"]
    mean, std, half = d[:3]
    return [f"{mean:+.{digits}f} ± {std:.{digits}f}", f"[{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]"]


# the unlearning outcome, with the direction in which a difference is better: log10 FQ and MU up, the
# worst-case leak J_W down
PAIRED_COLUMNS = [(*METRIC_COLUMNS[0], +1), (*METRIC_COLUMNS[1], +1), ("J_W", lambda m: m.get("leak_worst"), -1)]


def paired_tables(grid: Grid, runs: dict[str, dict], baseline: str | None = None) -> str:
    """Per learning rate, each method minus ``baseline`` (default ``grid.baseline``) on the same seed
    (same data, models and batch order): mean ± std, the 95 % confidence interval of the mean, and the
    seeds with Δ ≥ 0."""
    baseline = baseline or grid.baseline
    if baseline is None:
        return ""
    lines = [f"## Paired differences vs `{baseline}` (same seed)", "",
             "Δ = method − baseline per seed; CI = mean ± t(0.975, n−1)·std/√n; 'as good' counts the seeds where "
             "the method is at least as good (Δ ≥ 0 for log10 FQ and MU, Δ ≤ 0 for J_W, where lower is better).",
             ""]
    for variant in grid.variants:
        lines += [f"### Variant `{variant}`", "", "| lr | method | n | " +
                  " | ".join(f"Δ {c} | CI {c} | as good" for c, _, _ in PAIRED_COLUMNS) + " |",
                  "|---|---|---|" + "---|---|---|" * len(PAIRED_COLUMNS)]
        for lr in grid.all_lrs:
            base_rows = [runs.get(run_key(variant, s, lr, baseline)) for s in grid.seeds]
            for label, _, _ in grid.methods:
                if label == baseline or lr not in grid.lrs_of(label) or lr not in grid.lrs_of(baseline):
                    continue
                rows = [runs.get(run_key(variant, s, lr, label)) for s in grid.seeds]
                pairs = [(b["metrics"], r["metrics"]) for b, r in zip(base_rows, rows) if b and r]
                cells = []
                for _, f, better in PAIRED_COLUMNS:
                    base, other = [f(b) for b, _ in pairs], [f(r) for _, r in pairs]
                    d = paired_deltas(base, other)
                    good = sum(better * (o - b) >= 0 for b, o in zip(base, other) if b is not None and o is not None)
                    cells += delta_cell(d) + ["-" if d is None else f"{good}/{len(pairs)}"]
                lines.append(f"| {lr_text(lr)} | {label} | {len(pairs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def frontier_mu(points: list[tuple[float, float]], level: float) -> float | None:
    """The best model utility reached at forget quality ≥ ``level`` along one method's runs.

    ``points`` are (log10 FQ, MU), one per learning rate in increasing lr order; consecutive runs
    are joined by straight segments (what lrs in between would give, to first order). On each
    segment the part with log10 FQ ≥ level is an interval, and MU is linear on it, so its best MU is
    at an end: a run that reaches the level, or the point where the segment crosses it. ``None``
    if no run reaches the level (the method cannot forget that much within the lr range).
    """
    best = None
    for i, (fq, mu) in enumerate(points):
        if fq >= level:
            best = mu if best is None else max(best, mu)
        if i + 1 < len(points):
            fq2, mu2 = points[i + 1]
            if (fq - level) * (fq2 - level) < 0:
                cross = mu + (mu2 - mu) * (level - fq) / (fq2 - fq)
                best = cross if best is None else max(best, cross)
    return best


def frontier_tables(grid: Grid, runs: dict[str, dict], baseline: str | None = None) -> str:
    """Model utility at equal forget quality: per seed, each method's best MU at log10 FQ ≥ level
    (:func:`frontier_mu` over its learning rates), paired against ``baseline`` (default
    ``grid.baseline``) on that seed. This compares the forget-quality/utility trade-off itself, not runs
    at one lr."""
    baseline = baseline or grid.baseline
    if baseline is None or len(grid.all_lrs) < 2:
        return ""
    lines = [f"## Utility at equal forget quality vs `{baseline}` (paired per seed)", "",
             "Per seed and method: the best MU over runs with log10 FQ ≥ level, consecutive learning rates "
             "joined linearly; Δ = method − baseline on the same seed, only where both reach the level. A cell "
             "is the mean Δ, its 95 % interval, the seeds with Δ ≥ 0 over the paired seeds, and how many seeds "
             "each reaches the level (baseline, method). Levels beyond the grid's lowest or highest lr only see "
             "its end runs.", ""]
    levels = " | ".join(f"{lv:g}" for lv in grid.levels)
    for variant in grid.variants:
        lines += [f"### Variant `{variant}`", "", f"| method \\ log10 FQ ≥ | {levels} |",
                  "|---|" + "---|" * len(grid.levels)]
        curves = {(label, seed): frontier_points(runs, variant, seed, grid.lrs_of(label), label)
                  for label, _, _ in grid.methods for seed in grid.seeds}
        for label, _, _ in grid.methods:
            if label == baseline:
                continue
            cells = []
            for level in grid.levels:
                reach_b = reach_o = 0
                base, other = [], []
                for seed in grid.seeds:
                    b, o = curves[(baseline, seed)], curves[(label, seed)]
                    b = frontier_mu(b, level) if b else None
                    o = frontier_mu(o, level) if o else None
                    reach_b += b is not None
                    reach_o += o is not None
                    if b is not None and o is not None:
                        base.append(b)
                        other.append(o)
                d = paired_deltas(base, other)
                reach = f"(reach {reach_b}/{reach_o})"
                cells.append(f"- {reach}" if d is None else
                             f"{d[0]:+.3f} {delta_cell(d)[1]} {d[3]}/{len(base)} {reach}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def frontier_points(runs: dict[str, dict], variant: str, seed: int, lrs: list[float],
                    label: str) -> list[tuple[float, float]] | None:
    """(log10 FQ, MU) of one method and seed in increasing lr order; ``None`` if a run is missing or
    has no finite FQ or MU (a diverged run), so that seed is left out rather than guessed."""
    points = []
    for lr in sorted(lrs):
        row = runs.get(run_key(variant, seed, lr, label))
        if row is None:
            return None
        fq, mu = row["metrics"].get("forget_quality"), row["metrics"].get("model_utility")
        if fq is None or mu is None or not (math.isfinite(fq) and math.isfinite(mu)):
            return None
        points.append((log10(fq), float(mu)))
    return points


def trajectory_tables(grid: Grid, runs: dict[str, dict]) -> str:
    """Per variant and learning rate, for the runs that kept their checkpoints: the mean span AUROC of
    each method's token scores at every evaluation step, with the mean forget NLL of that step and the
    mean share of forget tokens scored above 0.5 (where the method has scores). Empty when no run
    kept checkpoints."""
    lines = []
    for variant in grid.variants:
        for lr in grid.all_lrs:
            rows = {}
            for label, _, _ in grid.methods:
                found = [r for r in (runs.get(run_key(variant, s, lr, label)) for s in grid.seeds)
                         if r and r.get("checkpoints")]
                if found:
                    rows[label] = found
            if not rows:
                continue
            steps = sorted({c["step"] for found in rows.values() for r in found for c in r["checkpoints"]})
            lines += [f"## Span AUROC over training, variant `{variant}`, lr {lr_text(lr)}", "",
                      "Mean over seeds of the span AUROC (author-unique tokens) at each evaluation step; in "
                      "brackets the mean forget NLL of that step and the mean share of forget tokens scored "
                      "above 0.5.", "",
                      "| method | n | " + " | ".join(f"step {s}" for s in steps) + " |",
                      "|---|---|" + "---|" * len(steps)]
            for label, found in rows.items():
                cells = []
                for step in steps:
                    at = [c for r in found for c in r["checkpoints"] if c["step"] == step]
                    auroc, nll = mean_of([c.get("span_auroc") for c in at]), mean_of([c.get("forget_nll") for c in at])
                    frac = mean_of([c.get("score_frac") for c in at])
                    extra = ", ".join(x for x in (f"{nll:.1f}" if nll is not None else "",
                                                  f"{frac:.2f}" if frac is not None else "") if x)
                    cells.append("-" if auroc is None else f"{auroc:.3f}" + (f" ({extra})" if extra else ""))
                lines.append(f"| {label} | {len(found)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="*", help=f"grid names ({', '.join(GRIDS)}); 'all' for every grid but smoke")
    parser.add_argument("--output-dir", default="runs/sweep", help="runs.jsonl and <grid>.md go here")
    parser.add_argument("--cache-dir", default=ExperimentConfig().cache_dir)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tables-only", action="store_true", help="rebuild the tables from runs.jsonl")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="run only every N-th (variant, seed) pair from the K-th (start N processes "
                             "K = 0..N-1 on one output dir; then rebuild the tables with --tables-only)")
    parser.add_argument("--tofu-dir", default="data/tofu",
                        help="the TOFU configs as JSON Lines (the grids on real TOFU read them from here)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list or not args.grids:
        for name, grid in GRIDS.items():
            print(f"{name}: {grid.runs} runs — {grid.doc}")
        return 0
    names = [n for n in GRIDS if n != "smoke"] if args.grids == ["all"] else args.grids
    unknown = [n for n in names if n not in GRIDS]
    if unknown:
        print(f"error: unknown grid(s) {unknown}; choose from {', '.join(GRIDS)}", file=sys.stderr)
        return 2
    try:
        k, n = (int(x) for x in args.shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        print(f"error: --shard must be K/N with 0 <= K < N, got {args.shard!r}", file=sys.stderr)
        return 2
    for name in names:
        out = Path(args.output_dir) / name
        grid = GRIDS[name]
        if "benchmark.data_dir" in grid.base:
            grid = replace(grid, base={**grid.base, "benchmark.data_dir": args.tofu_dir})
        if not args.tables_only:
            run_grid(name, grid, out, args.cache_dir, args.threads, lambda m: print(m, flush=True), (k, n))
        runs = load_runs(out / "runs.jsonl")  # every shard's rows
        text = "\n".join([tables(name, grid, runs), *(paired_tables(grid, runs, b) + "\n" + frontier_tables(grid, runs, b)
                                                     for b in grid.baselines)])
        trajectories = trajectory_tables(grid, runs)
        if trajectories:
            text += "\n" + trajectories
        atomic_write_text(out / f"{name}.md", text + "\n")
        print(f"tables written to {out / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
