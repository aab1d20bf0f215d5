"""CPU time of ``linear_token_nll`` with kept logits against the width of the kept column blocks.

    python benchmarks/kept_block_width.py --n 2048 8192 --widths 512 1024 2048 4096 8192

Forward + backward (:func:`bench_cases.step`, op ``token_nll``: 1 in 7 rows ignored) at D=512,
V=32000, fp32; per (N, width) the median of ``--repeats`` steps after one warm-up step. What chose
:data:`atwu_kernels.kept.BLOCK_COLUMNS`; one process, so compare widths within a run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cases import make_problem, step  # noqa: E402

from atwu_kernels import kept  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, D=512, V=32000, fp32")
    for n in args.n:
        problem = make_problem(n, 512, 32000)
        step("token_nll", "fused", problem)  # compiles the row ops
        for width in args.widths:
            kept.BLOCK_COLUMNS = width
            step("token_nll", "fused", problem)
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                step("token_nll", "fused", problem)
                seconds.append(time.perf_counter() - start)
            print(f"N={n} width={width}: median {statistics.median(seconds) * 1e3:.0f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
