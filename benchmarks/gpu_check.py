"""GPU acceptance check for atwu_kernels (run on a CUDA machine from the repo root).

    python benchmarks/gpu_check.py [--quick] [--skip-tests]

1. Runs the kernel test files on CUDA (the Triton path is the default there).
2. bf16 accuracy: error of the Triton path vs a float64 oracle must be ≤ eager bf16's error + slack
   (loss, grad hidden, grad weight) at a moderate shape.
3. Timing at M=4096, D=4096, V=128256, bf16, forward+backward on random data: fused ATWU head,
   plain fused CE (``weighted_linear_cross_entropy``), the chunked-torch path and eager
   (materialised logits); median of many runs after warm-up (CUDA events), plus peak memory.
Writes ``benchmarks/results/gpu_check_<time>.json`` and ``.md`` (GPU name, versions, command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TEST_FILES = ["tests/kernels/test_kernels_token_nll.py", "tests/kernels/test_kernels_atwu_head.py", "tests/kernels/test_kernels_hf_models.py"]
BF16_SLACK = 1e-2


def run_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return dict(
        command=" ".join(cmd),
        returncode=proc.returncode,
        seconds=time.perf_counter() - start,
        tail=proc.stdout[-3000:] + proc.stderr[-2000:],
    )


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def bf16_accuracy(n=2048, d=1024, v=32000) -> dict:
    from atwu_kernels import linear_token_nll

    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(n, d, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(v, d, device="cuda", generator=gen) / d**0.5).bfloat16()
    y = torch.randint(0, v, (n,), device="cuda", generator=gen)
    y[::9] = -100
    up = torch.rand(n, device="cuda", generator=gen)

    def grads(fn, dtype):
        hh, ww = h.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        out = fn(hh, ww)
        (out * up.to(out.dtype)).sum().backward()
        return out.detach(), hh.grad, ww.grad

    ref = grads(lambda a, b: F.cross_entropy(a @ b.t(), y, reduction="none"), torch.float64)
    eager = grads(lambda a, b: F.cross_entropy((a @ b.t()).float(), y, reduction="none"), torch.bfloat16)
    ours = grads(lambda a, b: linear_token_nll(a, b, y), torch.bfloat16)
    report = {}
    for i, name in enumerate(("nll", "grad_hidden", "grad_weight")):
        e, o = _rel(eager[i], ref[i]), _rel(ours[i], ref[i])
        report[name] = dict(eager_rel_err=e, triton_rel_err=o, ok=o <= e + BF16_SLACK)
    return report


def _time_ms(fn, warmup, repeats) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timing(m=4096, d=4096, v=128256, warmup=3, repeats=20) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from atwu_kernels import atwu_head, linear_token_nll, weighted_linear_cross_entropy
    from bench_memory import peak_memory_bytes

    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(m, d, device="cuda", generator=gen).bfloat16().requires_grad_()
    w = (torch.randn(v, d, device="cuda", generator=gen) / d**0.5).bfloat16().requires_grad_()
    y = torch.randint(0, v, (m,), device="cuda", generator=gen)
    forget = torch.rand(m, device="cuda", generator=gen) < 0.5
    sw = torch.randn(d, device="cuda", generator=gen) * 0.02
    sb = torch.zeros((), device="cuda")

    def step(loss_fn):
        def run():
            h.grad = w.grad = None
            loss_fn().backward()
            return h.grad, w.grad

        return run

    variants = {
        "fused_atwu_head": lambda: atwu_head(h, w, y, forget, sw, sb).loss,
        "fused_ce_sum": lambda: weighted_linear_cross_entropy(h, w, y, reduction="sum"),
        "token_nll_triton": lambda: linear_token_nll(h, w, y).sum(),
        "token_nll_chunked_torch": lambda: linear_token_nll(h, w, y, impl="torch").sum(),
        "eager_materialised": lambda: F.cross_entropy((h @ w.t()).float(), y, reduction="sum"),
    }
    flops = 6 * m * d * v
    out = {}
    for name, fn in variants.items():
        ms = _time_ms(step(fn), warmup, repeats)
        peak = peak_memory_bytes(step(fn), torch.device("cuda"))
        out[name] = dict(median_ms=ms, effective_tflops_6MDV=flops / ms / 1e9, peak_extra_mib=peak / 2**20)
    out["ratio_head_over_fused_ce"] = out["fused_atwu_head"]["median_ms"] / out["fused_ce_sum"]["median_ms"]
    out["shape"] = dict(m=m, d=d, v=v, dtype="bfloat16", warmup=warmup, repeats=repeats)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to do", file=sys.stderr)
        return 2
    import triton

    result = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        gpu=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if not args.skip_tests:
        result["tests"] = run_tests()
        print(f"tests: rc={result['tests']['returncode']} ({result['tests']['seconds']:.0f} s)")
    result["bf16_accuracy"] = bf16_accuracy()
    print("bf16:", json.dumps(result["bf16_accuracy"]))
    result["timing"] = timing(repeats=5 if args.quick else 20)
    print("timing:", json.dumps(result["timing"], indent=1))

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"gpu_check_{time.strftime('%Y%m%d_%H%M%S')}"
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, stem.with_suffix(".json"))
    lines = [
        f"# gpu_check — {result['gpu']}",
        "",
        f"`{result['command']}` · torch {result['torch']} · triton {result['triton']} · CUDA {result['cuda']}",
        "",
    ]
    if "tests" in result:
        lines += [f"- kernel tests on CUDA: rc={result['tests']['returncode']}", ""]
    lines += ["| bf16 check | eager rel err | triton rel err | ok |", "|---|---|---|---|"]
    lines += [
        f"| {k} | {r['eager_rel_err']:.2e} | {r['triton_rel_err']:.2e} | {r['ok']} |"
        for k, r in result["bf16_accuracy"].items()
    ]
    lines += [
        "",
        "| variant (M=4096, D=4096, V=128256, bf16, fwd+bwd) | median ms | TFLOPS (6MDV) | peak extra MiB |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {r['median_ms']:.2f} | {r['effective_tflops_6MDV']:.0f} | {r['peak_extra_mib']:.0f} |"
        for k, r in result["timing"].items()
        if isinstance(r, dict) and "median_ms" in r
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    ok = all(r["ok"] for r in result["bf16_accuracy"].values()) and result.get("tests", {}).get("returncode", 0) == 0
    print(f"wrote {stem}.json/.md; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
