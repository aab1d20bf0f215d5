"""``python -m atwu_fast.tune --method M --trials N [unlearn options] [--tune.* options]``: tune one
method's hyper-parameters (TPE over the ranges declared beside its Params) on tuning seeds, re-evaluate
the best setting on fresh seeds, and write the study's report to ``--output-dir``. Rerun the same command
to resume the study (its trials live in an SQLite file there)."""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..config.args import fail, parse_config
from ..model.loading import quiet_libraries
from ..suites.config import MOVED
from ..unlearn.experiment import SHORTCUTS
from .config import TuneConfig
from .report import record_tuned, write_report
from .study import Tuner, best_values, open_study, reevaluate, run_study


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = parse_config(TuneConfig, args, prog="python -m atwu_fast.tune", description=__doc__.splitlines()[0],
                       shortcuts={**SHORTCUTS, "--trials": "tune.trials"}, moved=MOVED)
    names = cfg.method_list()
    if len(names) != 1:
        fail("python -m atwu_fast.tune tunes one method: give --method M (not --methods)")
    method, opts = names[0], cfg.tune
    out_dir = Path(cfg.output_dir or f"runs/tune-{cfg.benchmark.name}-{method}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    quiet_libraries()
    storage = opts.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    study = open_study(opts, opts.study or f"{cfg.benchmark.name}-{method}", storage)
    scratch = Path(tempfile.mkdtemp(prefix="atwu-tune-"))
    try:
        tuner = Tuner(cfg, method, scratch)
        run_study(tuner, opts, study)
        try:
            best = best_values(study)
        except ValueError as exc:
            fail(str(exc))
        print(f"best: {best} (objective {study.best_value:.4f}); re-evaluating on seeds {list(opts.eval_seeds)}")
        fresh = reevaluate(tuner, best, list(opts.eval_seeds))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    command = "python -m atwu_fast.tune " + " ".join(shlex.quote(a) for a in args)
    doc = write_report(out_dir, study, method, best, fresh, opts, command)
    if opts.record:
        record_tuned(Path(opts.record), method, doc)
        print(f"best setting of {method} recorded in {opts.record}")
    for key, value in doc["fresh"].items():
        if isinstance(value, dict):
            print(f"{key:24s} {value['mean']:.4g} ± {value['ci95']:.2g} ({value['n']} seeds)")
    print(f"study report written to {out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
