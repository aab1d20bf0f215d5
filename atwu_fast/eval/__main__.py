"""``python -m atwu_fast.eval``: evaluate a model directory or hub id on TOFU, RWKU or JSONL sets.

Writes ``<NAME>_EVAL.json`` (per-row values) and ``<NAME>_SUMMARY.json`` (aggregates) in the
reference harness's layout. ``--logs DIR`` instead re-scores a published log of the original TOFU
release without a model: forget quality (against ``--retain-logs``), model utility and every
component, with the original script's formulas. ``--retain-logs`` (a retain model's TOFU_EVAL.json) supplies the
reference truth ratios for forget quality and the reference AUC for privleak. Under ``torchrun`` /
``accelerate launch`` every rank evaluates its share of the rows (the model replicated per rank) and
rank 0 writes the gathered logs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..config import ConfigError, option
from ..config.args import fail, parse_config
from ..data.io import atomic_write_text
from ..data.readers import DataError
from ..eval.logs import dumps, save_logs, summarize
from ..model.distributed import init_from_env, shutdown
from ..model.loading import quiet_libraries
from ..suites import SUITES, check_sections_apply
from ..suites.config import MOVED, BenchmarkConfig
from ..suites.jsonl.config import JsonlConfig
from ..suites.rwku.config import RwkuConfig
from ..suites.tofu.config import TofuConfig
from ..suites.tofu.original_logs import ORIGINAL_COLUMNS, rescore

SHORTCUTS = {"--benchmark": "benchmark.name", "--split": "tofu.split", "--model": "benchmark.model",
             "--targets": "rwku.targets", "--retain-logs": "tofu.retain_logs",
             "--data-dir": "benchmark.data_dir", "--output-dir": "output_dir", "--logs": "logs"}


def _tofu_default() -> BenchmarkConfig:
    return BenchmarkConfig(name="tofu")


@dataclass
class EvalRunConfig:
    output_dir: str = option("where the logs are written (default: runs/eval-<benchmark>-<time>)", "")
    threads: int = option("torch CPU threads (0: torch default)", 0)
    logs: str = option("re-score an original TOFU release log (its folder or eval_log_aggregated.json) without a "
                       "model; --retain-logs gives forget quality", "")
    perturbed_mean: Literal["geometric", "arithmetic"] = option(
        "with --logs: the truth ratio's mean over perturbed answers, geometric (the release's "
        "aggregate_eval_stat.py) or arithmetic (its in-training utils.get_model_utility)", "geometric")
    benchmark: BenchmarkConfig = field(default_factory=_tofu_default)
    tofu: TofuConfig = field(default_factory=TofuConfig)
    rwku: RwkuConfig = field(default_factory=RwkuConfig)
    jsonl: JsonlConfig = field(default_factory=JsonlConfig)

    def validate(self) -> None:
        if self.benchmark.name == "synthetic":
            raise ConfigError("python -m atwu_fast.eval evaluates tofu, rwku or jsonl; "
                              "the synthetic benchmark is evaluated by python -m atwu_fast.unlearn")
        check_sections_apply(self)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalRunConfig, argv, prog="python -m atwu_fast.eval", description=__doc__.splitlines()[0],
                       shortcuts=SHORTCUTS, moved=MOVED)
    bcfg = cfg.benchmark
    out_dir = Path(cfg.output_dir or f"runs/eval-{bcfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if cfg.logs:
        return rescore_logs(cfg, out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_libraries()
    suite = SUITES[bcfg.name](cfg)
    ctx = init_from_env(cuda=suite.uses_cuda())
    if ctx.enabled and not cfg.output_dir:
        fail("a distributed run needs an explicit --output-dir (the same on every rank)")
    t0 = time.perf_counter()
    try:
        suite.load_eval_data()
        model = suite.load_target()
        logs = suite.evaluate_logs(model, suite.retain_reference(), ctx=ctx)  # each rank its share of the rows
    except (DataError, ValueError) as exc:
        fail(str(exc))
    if not ctx.is_main:
        shutdown(ctx)
        return 0
    eval_path, summary_path = save_logs(out_dir, logs, suite.log_name)
    for key, value in summarize(logs).items():
        print(f"{key:32s} {value:.6g}" if isinstance(value, (int, float)) else f"{key:32s} {value}")
    print(f"\nlogs written to {eval_path} and {summary_path}  ({time.perf_counter() - t0:.0f}s)")
    shutdown(ctx)
    return 0


def rescore_logs(cfg: EvalRunConfig, out_dir: Path) -> int:
    """``--logs``: the original script's numbers of a published log, printed and written as TOFU_SUMMARY.json."""
    if cfg.benchmark.name != "tofu":
        fail("--logs re-scores original TOFU logs: use --benchmark tofu")
    try:
        scores = rescore(cfg.logs, cfg.tofu.retain_logs or None, cfg.perturbed_mean)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for key, value in scores.items():
        shown = "null" if value is None else f"{value:.6g}"
        print(f"{key:28s} {shown:>12s}  ({ORIGINAL_COLUMNS[key]})")
    path = out_dir / "TOFU_SUMMARY.json"
    atomic_write_text(path, dumps(scores) + "\n")
    print(f"\nsummary written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
