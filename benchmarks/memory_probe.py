"""Child process of :func:`bench_memory.fresh_process_peak`: one variant's peak memory, as a user sees it.

    python benchmarks/memory_probe.py --op weighted_ce --variant fused --n 8192 --d 512 --v 32000

Builds the problem, runs the variant once on a small problem (pages in code, thread pools and
compiled peers — fixed costs unrelated to the op's buffers), runs it once at full size and clears
``.grad`` (a training loop's second step, with no previous gradient counted), then measures a
third full-size step: peak resident memory above the level before it (CPU: ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cases import make_problem, step  # noqa: E402
from bench_memory import peak_memory_bytes  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--v", type=int, required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    step(args.op, args.variant, make_problem(64, args.d, 300, dtype, device, seed=1))  # warm-up, small
    problem = make_problem(args.n, args.d, args.v, dtype, device)
    step(args.op, args.variant, problem)
    problem.zero_grad()
    start = time.perf_counter()
    box = {}
    peak = peak_memory_bytes(lambda: box.setdefault("loss", step(args.op, args.variant, problem)), device)
    seconds = time.perf_counter() - start
    print(json.dumps(dict(peak_bytes=peak, seconds=seconds, loss=float(box["loss"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
