"""``python -m atwu_fast.eval``: evaluate a model directory or hub id on TOFU, RWKU or JSONL sets.

Writes ``<NAME>_EVAL.json`` (per-row values) and ``<NAME>_SUMMARY.json`` (aggregates) in the
reference harness's layout. ``--retain-logs`` (a retain model's TOFU_EVAL.json) supplies the
reference truth ratios for forget quality and the reference AUC for privleak. Under ``torchrun`` /
``accelerate launch`` every rank evaluates its share of the rows (the model replicated per rank) and
rank 0 writes the gathered logs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ConfigError, option
from ..config.args import fail, parse_config
from ..data.readers import DataError
from ..eval.logs import save_logs, summarize
from ..model.distributed import collective_eval, init_from_env, shutdown
from ..model.loading import quiet_libraries
from ..suites import SUITES
from ..suites.config import BenchmarkConfig

SHORTCUTS = {"--benchmark": "benchmark.name", "--split": "benchmark.split", "--model": "benchmark.model",
             "--targets": "benchmark.targets", "--retain-logs": "benchmark.retain_logs",
             "--data-dir": "benchmark.data_dir", "--output-dir": "output_dir"}


def _tofu_default() -> BenchmarkConfig:
    return BenchmarkConfig(name="tofu")


@dataclass
class EvalRunConfig:
    output_dir: str = option("where the logs are written (default: runs/eval-<benchmark>-<time>)", "")
    threads: int = option("torch CPU threads (0: torch default)", 0)
    benchmark: BenchmarkConfig = field(default_factory=_tofu_default)

    def validate(self) -> None:
        if self.benchmark.name == "synthetic":
            raise ConfigError("python -m atwu_fast.eval evaluates tofu, rwku or jsonl; "
                              "the synthetic benchmark is evaluated by python -m atwu_fast.unlearn")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalRunConfig, argv, prog="python -m atwu_fast.eval", description=__doc__.splitlines()[0],
                       shortcuts=SHORTCUTS)
    bcfg = cfg.benchmark
    out_dir = Path(cfg.output_dir or f"runs/eval-{bcfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
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
        with collective_eval(ctx):
            logs = suite.evaluate_logs(model, suite.retain_reference())
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


if __name__ == "__main__":
    sys.exit(main())
