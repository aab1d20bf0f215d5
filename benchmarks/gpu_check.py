"""GPU acceptance check for atwu_kernels — one command on a CUDA machine, from the repo root.

    python benchmarks/gpu_check.py             # ≤ 8 min on an H200, compilation included
    python benchmarks/gpu_check.py --dry-run   # CPU, tiny shapes, Triton interpreter: checks this script

1. **Tests** — the kernel test files on CUDA (all three backends compiled for real).
2. **bf16 accuracy** — loss and gradients of each backend against float64 on the bf16 operands,
   element-wise within bounds derived from bf16 arithmetic (``tests/kernels/helpers.py``); every
   variant gets its own leaves, so no two share a ``.grad``.
3. **Speed and memory** at M=4096 and M=16384 (D=4096, V=128256, bf16, forward + backward) of the
   fused head, the weighted CE, the plain mean CE and ``linear_token_nll`` on both Triton backends,
   naive eager, and the peers (Liger, CCE) on the same inputs: median ms, TFLOP/s with each op's
   own FLOPs (``linear_token_nll``: 8·M·D·V), modelled logits traffic (:mod:`atwu_kernels.costs`)
   and the peak memory above the inputs (allocator statistics, gradients cleared first).
4. **Checks** — tests pass; accuracy within bounds; each peak within the memory model
   (:mod:`bench_model`); head ≤ 1.05× weighted CE; faster than each peer on the same op; on an H200
   also head ≤ 25 ms, weighted CE ≤ 24 ms, ``linear_token_nll`` ≤ 33 ms at M=4096.
5. Writes ``benchmarks/results/<date>-<gpu>.json`` (date, GPU, versions, the exact command, all
   numbers, every check) and prints the table; exit 0 only when every check ran and passed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TEST_FILES = [
    "tests/kernels/test_kernels_token_nll.py",
    "tests/kernels/test_kernels_atwu_head.py",
    "tests/kernels/test_kernels_autocast.py",
    "tests/kernels/test_kernels_inputs.py",
]
IMPLS = ("triton", "triton_fused")
OURS_OPS = ("atwu_head", "weighted_ce", "mean_ce", "token_nll")
PEER_OPS = ("mean_ce", "token_nll", "atwu_head")
H200_TARGETS_MS = {"atwu_head": 25.0, "weighted_ce": 24.0, "token_nll": 33.0}
HEAD_OVER_CE = 1.05


def _setup(dry_run: bool):
    """Imports after TRITON_INTERPRET is decided (it must be set before the kernels are imported)."""
    import torch

    if dry_run and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO / "tests" / "kernels"))


def run_tests(device) -> dict:
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-x", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tail = (proc.stdout[-3000:] + proc.stderr[-1000:]).strip()
    return dict(command=" ".join(cmd), returncode=proc.returncode, seconds=time.perf_counter() - start, tail=tail)


# --------------------------------------------------------------------------------- accuracy


def accuracy(shape, device, impls) -> dict:
    """Each backend's nll and gradients (bf16 leaves) within the bf16 bounds of the float64 truth."""
    import torch
    from helpers import BF16_U, assert_within, bf16_gemm_bounds

    from atwu_kernels import linear_token_nll

    n, d, v = shape
    gen = torch.Generator().manual_seed(0)
    h0 = torch.randn(n, d, generator=gen).to(device, torch.bfloat16)
    w0 = (torch.randn(v, d, generator=gen) / d**0.5).to(device, torch.bfloat16)
    y = torch.randint(0, v, (n,), generator=gen).to(device)
    y[::9] = -100
    up = (torch.rand(n, generator=gen) * 2 - 0.5).to(device)
    h64, w64 = h0.double().requires_grad_(), w0.double().requires_grad_()
    z = h64 @ w64.t()
    ref = torch.nn.functional.cross_entropy(z, y, reduction="none", ignore_index=-100)
    (ref * up.double()).sum().backward()
    bounds = bf16_gemm_bounds(h64.detach(), w64.detach(), None, y, up.double() * (y != -100))
    leaves, report = [], {}
    for impl in impls:
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()  # own leaves: no shared .grad
        leaves += [h, w]
        nll = linear_token_nll(h, w, y, impl=impl)
        (nll * up).sum().backward()
        entry = {}
        for name, got, want, bound in (
            ("nll", nll, ref, bounds["nll"]),
            ("grad_hidden", h.grad, h64.grad, bounds["grad_hidden"] + 2 * BF16_U * h64.grad.abs()),
            ("grad_weight", w.grad, w64.grad, bounds["grad_weight"] + 2 * BF16_U * w64.grad.abs()),
        ):
            error = (got.detach().double() - want.detach()).abs()
            relative = torch.where(bound > 0, error / bound.clamp_min(1e-300), 0.0)
            try:
                assert_within(got, want, bound, f"{impl} {name}")
                ok = True
            except AssertionError:
                ok = False
            entry[name] = dict(max_error=float(error.max()), max_error_over_bound=float(relative.max()), ok=ok)
        report[impl] = entry
    assert len({t.data_ptr() for t in leaves}) == len(leaves), "variants must not share leaves"
    return report


# --------------------------------------------------------------------------------- timing


def time_ms(fn, device, budget_s: float) -> list[float]:
    """Samples of one call (ms): two warm-up calls (compilation), then as many as fit ``budget_s`` (3–20)."""
    import torch
    from bench_timing import interleaved_seconds

    if device.type != "cuda":
        return [s * 1e3 for s in interleaved_seconds({"f": fn}, repeats=3, device=device)["f"]]
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    first = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    first[0].record()
    fn()
    first[1].record()
    torch.cuda.synchronize()
    repeats = int(min(20, max(3, budget_s * 1e3 / max(first[0].elapsed_time(first[1]), 1e-3))))
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return samples


def measure(op, variant, problem, device, budget_s) -> dict:
    from bench_cases import step
    from bench_memory import peak_memory_bytes

    samples = time_ms(lambda: step(op, variant, problem), device, budget_s)
    problem.zero_grad()  # the baseline must not count a previous step's gradients
    peak = peak_memory_bytes(lambda: step(op, variant, problem), device)
    problem.zero_grad()
    return dict(median_ms=statistics.median(samples), samples_ms=samples, peak_bytes=peak)


def timing(shape, device, dtype, impls, peers, budget_s) -> dict:
    import torch
    from bench_cases import flops, make_problem
    from bench_model import expected_peak_bytes
    from peers import unavailable_reason

    from atwu_kernels import auto_chunk_size
    from atwu_kernels.costs import op_costs

    n, d, v = shape
    problem = make_problem(n, d, v, dtype, device)
    chunk = min(n, auto_chunk_size(n, v, d, dtype.itemsize, device))
    rows = {}
    for op in OURS_OPS:
        for impl in impls:
            m = measure(op, f"fused:{impl}", problem, device, budget_s)
            costs = op_costs(op, impl, n, d, v, dtype.itemsize, chunk)
            m.update(
                flops=costs.flops,
                tflops=costs.flops / (m["median_ms"] * 1e-3) / 1e12,
                logits_bytes=costs.logits_bytes,
                exposed_bytes=costs.exposed_bytes,
                expected_h200_ms=costs.expected_seconds() * 1e3,
                memory_model_bytes=expected_peak_bytes(op, shape, dtype, device, impl),
            )
            rows[f"{op}/{impl}"] = m
    naive = measure("mean_ce", "naive", problem, device, budget_s)
    naive.update(flops=flops("mean_ce", n, d, v), tflops=flops("mean_ce", n, d, v) / (naive["median_ms"] * 1e-3) / 1e12)
    rows["mean_ce/naive_eager"] = naive
    for peer in peers:
        reason = unavailable_reason(peer, device)
        for op in PEER_OPS:
            if reason is not None:
                rows[f"{op}/{peer}"] = dict(skipped=reason)
                continue
            m = measure(op, f"peer:{peer}", problem, device, budget_s)
            m.update(flops=flops(op, n, d, v), tflops=flops(op, n, d, v) / (m["median_ms"] * 1e-3) / 1e12)
            rows[f"{op}/{peer}"] = m
    del problem
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(shape=dict(m=n, d=d, v=v, dtype=str(dtype), chunk_rows=chunk), rows=rows)


# --------------------------------------------------------------------------------- checks


def checks(result: dict, on_h200: bool) -> list[dict]:
    """Every check with ``ok`` True/False, or None when it cannot be judged here (never a pass)."""
    out = []
    timed = not result["dry_run"]  # interpreter timings say nothing about the kernels

    def add(name, ok, detail):
        out.append(dict(check=name, ok=ok, detail=detail))

    def add_timed(name, ok, detail):
        add(name, ok if timed else None, detail if timed else f"{detail} (dry run: timing not judged)")

    tests = result.get("tests")
    add("kernel tests on the device", None if tests is None else tests["returncode"] == 0,
        "not run" if tests is None else f"rc={tests['returncode']}")  # fmt: skip
    for impl, entry in result["accuracy"].items():
        for name, r in entry.items():
            add(f"bf16 {name} within bound ({impl})", r["ok"], f"max error/bound {r['max_error_over_bound']:.2f}")
    default = "triton"
    for label, block in result["timing"].items():
        rows = block["rows"]
        for key, r in rows.items():
            if "memory_model_bytes" in r:
                add(f"{label} {key} peak ≤ memory model", r["peak_bytes"] <= r["memory_model_bytes"],
                    f"{r['peak_bytes'] / 2**20:.0f} MiB vs {r['memory_model_bytes'] / 2**20:.0f} MiB")  # fmt: skip
        for impl in result["impls"]:
            ratio = rows[f"atwu_head/{impl}"]["median_ms"] / rows[f"weighted_ce/{impl}"]["median_ms"]
            add_timed(f"{label} head ≤ {HEAD_OVER_CE}× weighted CE ({impl})", ratio <= HEAD_OVER_CE, f"{ratio:.3f}")
        for op in PEER_OPS:
            for peer in result["peers"]:
                theirs = rows.get(f"{op}/{peer}", {})
                if "median_ms" not in theirs:
                    add(f"{label} {op} faster than {peer}", None, theirs.get("skipped", "not measured"))
                    continue
                ours = rows[f"{op}/{default}"]["median_ms"]
                add_timed(f"{label} {op} faster than {peer}", ours < theirs["median_ms"],
                          f"{ours:.2f} ms vs {theirs['median_ms']:.2f} ms")  # fmt: skip
    label, first = next(iter(result["timing"].items()))
    for op, target in H200_TARGETS_MS.items():
        ms = first["rows"][f"{op}/{default}"]["median_ms"]
        add(f"{label} {op} ≤ {target} ms (H200)", (ms <= target) if on_h200 and timed else None,
            f"{ms:.2f} ms" + ("" if on_h200 else f" on {result['gpu']}: the targets are for an H200"))  # fmt: skip
    return out


def table(result: dict) -> str:
    lines = [f"gpu_check — {result['gpu']} — torch {result['torch']}, triton {result['triton']}", ""]
    for label, block in result["timing"].items():
        lines += [
            f"{label} {block['shape']}",
            f"{'variant':32} {'ms':>9} {'TFLOP/s':>8} {'peak MiB':>9} {'model ms':>9}",
        ]
        for key, r in block["rows"].items():
            if "skipped" in r:
                lines.append(f"{key:32} skipped: {r['skipped']}")
                continue
            model = f"{r['expected_h200_ms']:9.2f}" if "expected_h200_ms" in r else f"{'':9}"
            lines.append(f"{key:32} {r['median_ms']:9.2f} {r['tflops']:8.1f} {r['peak_bytes'] / 2**20:9.0f} {model}")
        lines.append("")
    for c in result["checks"]:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[c["ok"]]
        lines.append(f"[{mark}] {c['check']}: {c['detail']}")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def backend_choices(device) -> dict:
    """What this device gets: its compute capability, the Triton tile tables, and the backend each op
    runs with ``impl=None`` after its first-use self-check (bf16 and fp32, with gradients)."""
    import torch

    from atwu_kernels import atwu_head, linear_token_nll, selfcheck, weighted_linear_cross_entropy
    from atwu_kernels.triton_fused import GPU_TILES, GPU_TILES_FP32
    from atwu_kernels.triton_impl import GPU_ROW_TILES

    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.bfloat16, torch.float32):
        h = torch.randn(64, 64, generator=gen).to(device, dtype).requires_grad_()
        w = (torch.randn(256, 64, generator=gen) * 0.3).to(device, dtype).requires_grad_()
        y = torch.randint(0, 256, (64,), generator=gen).to(device)
        linear_token_nll(h, w, y).sum().backward()
        weighted_linear_cross_entropy(h, w, y, torch.rand(64, generator=gen).to(device), softcap=30.0).backward()
        sw, sb = torch.zeros(64, device=device), torch.zeros((), device=device)
        atwu_head(h, w, y, torch.arange(64, device=device) % 2 == 0, sw, sb).loss.backward()
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return {
        "capability": None if capability is None else f"sm_{capability[0]}{capability[1]}",
        "tiles": {"fused": GPU_TILES, "fused_fp32": GPU_TILES_FP32, "rows": list(GPU_ROW_TILES)},
        "backends": [{**{k: str(v) for k, v in config._asdict().items()}, "uses": impl}
                     for config, impl in selfcheck.verdicts().items()],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny shapes, interpreter; no tests; exercises the script"
    )
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--budget-s", type=float, default=1.5, help="timing seconds per variant (after warm-up)")
    ap.add_argument("--peers", default="liger,cce", help="comma-separated peers (see benchmarks/peers.py)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = ap.parse_args(argv)
    _setup(args.dry_run)
    import torch
    import triton

    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check: no CUDA device (use --dry-run to exercise the script on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)"
    if args.dry_run:
        acc_shape, shapes, impls, budget = (40, 32, 200), {"M=32": (32, 32, 300), "M=64": (64, 32, 300)}, IMPLS, 0.0
    else:
        acc_shape, impls, budget = (2048, 1024, 32000), IMPLS, args.budget_s
        shapes = {"M=4096": (4096, 4096, 128256), "M=16384": (16384, 4096, 128256)}
    peers = [p for p in args.peers.split(",") if p]
    versions = {}
    for module in ("liger_kernel", "cut_cross_entropy"):
        try:
            from importlib.metadata import version

            versions[module] = version(module.replace("_", "-"))
        except Exception:  # noqa: BLE001 - not installed
            versions[module] = None
    result = dict(
        date=datetime.date.today().isoformat(),
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=" ".join([Path(sys.executable).name, *sys.argv]) if argv is None else "gpu_check " + " ".join(argv),
        gpu=gpu,
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        peer_versions=versions,
        impls=list(impls),
        peers=peers,
        dry_run=args.dry_run,
    )
    from atwu_kernels.gemm_accumulate import fp32_output_gemm_supported

    result["fp32_output_gemm"] = fp32_output_gemm_supported(device.type, device.index)  # dW accumulated in the GEMM
    start = time.perf_counter()
    if not (args.skip_tests or args.dry_run):
        result["tests"] = run_tests(device)
        print(f"tests: rc={result['tests']['returncode']} ({result['tests']['seconds']:.0f} s)", flush=True)
    result["device"] = backend_choices(device)
    result["accuracy"] = accuracy(acc_shape, device, impls)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result["timing"] = {label: timing(s, device, dtype, impls, peers, budget) for label, s in shapes.items()}
    result["checks"] = checks(result, "H200" in gpu)
    result["seconds"] = time.perf_counter() - start
    result["ok"] = all(c["ok"] is True for c in result["checks"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['date']}-{_slug(gpu)}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    print(table(result))
    verdict = "OK" if result["ok"] else ("FAILED" if any(c["ok"] is False for c in result["checks"]) else "INCOMPLETE")
    print(
        f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}; {verdict} ({result['seconds']:.0f} s)"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
