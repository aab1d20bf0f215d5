"""Interleaved CPU timing of the fused losses against Cut Cross-Entropy's ``impl="torch_compile"``.

    python benchmarks/cpu_peer_timing.py --repeats 9 [--ops token_nll weighted_ce atwu_head] [--memory]
    python benchmarks/cpu_peer_timing.py --variants fused fused-eager peer:cce_torch_compile

``fused-eager`` is the package with ``ATWU_KERNELS_TORCH_COMPILE=0`` (eager CPU row ops). The last
variant is the denominator of the ratios.

Forward + backward (:func:`bench_cases.step`) on the peer benchmark's CPU shape (N=2048, D=512,
V=32000, fp32, random inputs from :func:`bench_cases.make_problem`). Every round times each
(op, variant) once, in the same order, after ``--warmup`` rounds (the peer compiles in the first),
so a change in machine load hits all variants alike; prints each op's medians, the ratio of medians
ours/CCE with its relative standard error (:mod:`bench_timing`) and, with ``--memory``, each
variant's peak resident memory measured in a fresh process (:func:`bench_memory.fresh_process_peak`).
A shared host makes single numbers noisy: compare medians of many rounds, never one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from cpuinfo import get_cpu_info

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cases import OPS, make_problem, step  # noqa: E402
from bench_memory import fresh_process_peak  # noqa: E402
from bench_timing import median_relative_se  # noqa: E402

from atwu_kernels.torch_impl import COMPILE_ENV  # noqa: E402
from conftest import _version  # noqa: E402

PEER = "peer:cce_torch_compile"
EAGER = "fused-eager"
SHAPE = (2048, 512, 32000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--variants", nargs="+", default=["fused", PEER])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--shape", type=int, nargs=3, default=SHAPE, metavar=("N", "D", "V"))
    ap.add_argument("--memory", action="store_true", help="also measure peak memory in fresh processes")
    ap.add_argument("--json", help="write the samples here")
    args = ap.parse_args(argv)
    problem = make_problem(*args.shape)
    keys = [(op, variant) for op in args.ops for variant in args.variants]
    samples: dict[str, list[float]] = {f"{op} {variant}": [] for op, variant in keys}
    for round_index in range(args.warmup + args.repeats):
        for op, variant in keys:
            eager = variant == EAGER  # the package with its eager (uncompiled) CPU row ops
            os.environ[COMPILE_ENV] = "0" if eager else "1"
            start = time.perf_counter()
            step(op, "fused" if eager else variant, problem)
            if round_index >= args.warmup:
                samples[f"{op} {variant}"].append(time.perf_counter() - start)
    report: dict[str, dict] = {}
    base = args.variants[-1]
    for op in args.ops:
        medians = {v: statistics.median(samples[f"{op} {v}"]) for v in args.variants}
        line = {v: round(m * 1e3, 1) for v, m in medians.items()}
        ratios = {}
        for v in args.variants[:-1]:
            se = math.hypot(median_relative_se(samples[f"{op} {v}"]), median_relative_se(samples[f"{op} {base}"]))
            ratios[v] = dict(time_ratio=round(medians[v] / medians[base], 3), relative_se=round(se, 3))
        report[op] = dict(median_ms=line, vs=base, ratios=ratios)
        if args.memory:
            dtype = str(problem.hidden.dtype).split(".")[1]
            peaks = {}
            for v in args.variants:
                os.environ[COMPILE_ENV] = "0" if v == EAGER else "1"  # inherited by the probe process
                peaks[v] = fresh_process_peak(op, "fused" if v == EAGER else v, tuple(args.shape), dtype, "cpu")
                peaks[v] = peaks[v]["peak_bytes"]
            os.environ.pop(COMPILE_ENV)
            report[op]["peak_mib"] = {v: round(p / 2**20, 1) for v, p in peaks.items()}
            report[op]["memory_ratio"] = {v: round(peaks[v] / peaks[base], 3) for v in args.variants[:-1]}
        print(op, json.dumps(report[op]), flush=True)
    print(f"{args.repeats} interleaved rounds after {args.warmup} warm-up, torch threads {torch.get_num_threads()}")
    if args.json:
        provenance = dict(
            command=" ".join(["python benchmarks/cpu_peer_timing.py", *(argv if argv is not None else sys.argv[1:])]),
            date=time.strftime("%Y-%m-%d"),
            cpu=get_cpu_info().get("brand_raw", ""),  # what pytest-benchmark records as the CPU
            threads=torch.get_num_threads(),
            versions={name: _version(name) for name in ("torch", "cut-cross-entropy", "atwu-fast")},
            shape=dict(zip("ndv", args.shape)),
        )
        Path(args.json).write_text(json.dumps(dict(provenance, samples_s=samples, report=report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
