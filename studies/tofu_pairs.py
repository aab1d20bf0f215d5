"""``python -m studies.tofu_pairs --tofu-dir DIR --output-dir studies/results``: how well the laptop-scale TOFU
pairs fit, per seed.

For each seed K the command runs the tiny TOFU protocol with that seed (``--tiny.model.seed K --seed K``),
which fine-tunes (or takes from the cache) the seed's target and retain model and evaluates both with TOFU's
metrics (no generation), then one step of gradient ascent that nothing here reads. From the models' fine-tuning
summaries (in the cache) and the run's ``reference.json`` one line per seed goes to
``DIR/tofu_pairs/pairs.jsonl``: each model's fine-tuning steps, final running answer NLL and seconds, its model
utility, and the target's log10 forget quality against the retain model. ``DIR/tofu_pairs/pairs.md`` is the table; ``--tables-only`` rebuilds it from ``pairs.jsonl``.
Extra arguments after ``--`` go to every run (e.g. another fine-tuning schedule).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from atwu_fast.config.args import parse_config
from atwu_fast.data.io import atomic_write_text
from atwu_fast.finetune.build import SUMMARY_FILE
from atwu_fast.suites import make_suite
from atwu_fast.unlearn.experiment import SHORTCUTS, ExperimentConfig
from studies.sweep import append, log10, mean_std

NAME = "tofu_pairs"


def pair_args(seed: int, tofu_dir: str, cache_dir: str, extra: list[str]) -> list[str]:
    return ["--benchmark", "tofu_tiny", "--benchmark.data_dir", tofu_dir, "--cache-dir", cache_dir,
            "--tiny.model.seed", str(seed), "--seed", str(seed), "--method", "grad_ascent", "--train.steps", "1",
            "--tofu.generate", "false", *extra]


def finetune_summaries(args: list[str]) -> dict[str, dict]:
    """The cached fine-tuning summaries of the pair the run with ``args`` used (kind -> summary)."""
    cfg = parse_config(ExperimentConfig, args, prog=NAME, description="", shortcuts=SHORTCUTS)
    suite = make_suite(cfg)
    suite.load_data(lambda message: None)
    return {kind: json.loads((d / SUMMARY_FILE).read_text()) for kind, d in suite.model_dirs().items()}


def pair_record(seed: int, summaries: dict[str, dict], reference: dict) -> dict:
    """One seed's line: each model's fine-tuning summary and reference metrics."""
    record: dict = {"seed": seed}
    for kind in ("target", "retain"):
        s = summaries[kind]
        record[kind] = {"steps": s["steps"], "final_nll": s["final_nll"], "seconds": round(s["seconds"]),
                        "model_utility": reference["models"][f"{kind} model"]["model_utility"]}
    record["target"]["log10_fq"] = log10(reference["models"]["target model"]["forget_quality"])
    return record


def table(records: list[dict], cap: int | None = None) -> str:
    """The per-seed table and a line of means (steps, NLL and seconds: fine-tuning; MU: model utility)."""
    lines = ["| seed | target steps | target NLL | target s | retain steps | retain NLL | retain s | target MU | "
             "retain MU | target log10 FQ |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r["seed"]):
        t, k = r["target"], r["retain"]
        lines.append(f"| {r['seed']} | {t['steps']} | {t['final_nll']:.4f} | {t['seconds']} | {k['steps']} | "
                     f"{k['final_nll']:.4f} | {k['seconds']} | {t['model_utility']:.3f} | {k['model_utility']:.3f} | "
                     f"{t['log10_fq']:.1f} |")
    models = [r[kind] for r in records for kind in ("target", "retain")]
    summary = [f"{len(records)} seeds; mean ± std: target MU {mean_std([r['target']['model_utility'] for r in records])}, "
               f"retain MU {mean_std([r['retain']['model_utility'] for r in records])}, target log10 FQ "
               f"{mean_std([r['target']['log10_fq'] for r in records])}; slowest fine-tuning "
               f"{max(m['seconds'] for m in models)} s"]
    if cap is not None:
        summary.append(f"models stopped by the {cap}-step cap: {sum(m['steps'] >= cap for m in models)} of {len(models)}")
    return "\n".join(lines) + "\n\n" + "; ".join(summary) + ".\n"


def write_table(out: Path) -> None:
    records = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines() if line.strip()]
    meta = json.loads((out / "meta.json").read_text())
    atomic_write_text(out / "pairs.md", f"# {meta['title']}\n\n{table(records, meta.get('cap'))}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m studies.tofu_pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--tofu-dir", default="data/tofu", help="TOFU configs as JSON Lines (the hub's names)")
    parser.add_argument("--output-dir", default="runs/sweep", help="tofu_pairs/ goes here")
    parser.add_argument("--cache-dir", default=".cache/atwu_fast")
    parser.add_argument("--seeds", default="0-9", help="K-L or K,L,...")
    parser.add_argument("--cap", type=int, default=None, help="the schedule's step cap (the table counts capped models)")
    parser.add_argument("--title", default="Tiny TOFU pairs per seed")
    parser.add_argument("--tables-only", action="store_true", help="rebuild pairs.md from pairs.jsonl")
    args = parser.parse_args(argv)
    out = Path(args.output_dir) / NAME
    if args.tables_only:
        write_table(out)
        return 0
    first, _, last = args.seeds.partition("-")
    seeds = list(range(int(first), int(last) + 1)) if last else [int(s) for s in args.seeds.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "meta.json", json.dumps({"title": args.title, "cap": args.cap, "extra": extra}) + "\n")
    done = {json.loads(line)["seed"] for line in (out / "pairs.jsonl").read_text().splitlines() if line.strip()} \
        if (out / "pairs.jsonl").exists() else set()
    for seed in (s for s in seeds if s not in done):
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            run_args = pair_args(seed, args.tofu_dir, args.cache_dir, extra)
            proc = subprocess.run([sys.executable, "-m", "atwu_fast.unlearn", *run_args, "--output-dir", run_dir],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"seed {seed}: the run failed: {proc.stderr.strip().splitlines()[-1:]}")
            reference = json.loads((Path(run_dir) / "reference.json").read_text())
            record = pair_record(seed, finetune_summaries(run_args), reference)
        record["wall_seconds"] = round(time.perf_counter() - start)
        append(out / "pairs.jsonl", record)
        print(f"seed {seed}: {json.dumps(record)}", flush=True)
    write_table(out)
    print(f"wrote {out / 'pairs.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
