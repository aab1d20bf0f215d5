"""Every launched Triton kernel compiles for every GPU generation a user may have (sm_75 T4, sm_80 A100,
sm_86 / sm_89 consumer cards, sm_90 H100/H200), without a GPU and without the interpreter.

The interpreter runs kernels as Python and misses what only the compiler rejects (a non-constexpr
global, a shape ``tl.dot`` refuses, more shared memory than an SM has). ``compile_kernels.py``
records the launches the public ops make with the GPU launch configuration (tiles, warps, stages,
``UPCAST``, ``DOT_PRECISION``; bf16, fp16, fp32 and autocast operands) and compiles them for each
architecture. The default compiles, for sm_90 and sm_75 (the largest and the smallest shared memory,
and the one generation without bfloat16 tensor cores), a subset covering every argument dtype,
constexpr value and launch option of each kernel (28 compilations per architecture, ≈ 2 min on 2
cores); ``ATWU_COMPILE_ALL=1`` compiles every distinct launch (≈ 190 per architecture) for all five
(≈ 40 min on 2 cores): run it before a GPU session. The full set for one architecture, by hand:
``cd tests/kernels && TRITON_INTERPRET=0 TRITON_DUMP_PTXAS_LOG=1 python compile_kernels.py --arch=86``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EVERY = os.environ.get("ATWU_COMPILE_ALL", "0") not in ("", "0")
ARCHS = (90, 89, 86, 80, 75) if EVERY else (90, 75)
# Maximum shared memory per thread block (CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability"): 7.5 64 KB, 8.0 163 KB, 8.6 and 8.9 99 KB, 9.0 227 KB. A kernel asking for more
# compiles but is refused at launch (Triton's OutOfResources).
MAX_SHARED = {90: 227 * 1024, 89: 99 * 1024, 86: 99 * 1024, 80: 163 * 1024, 75: 64 * 1024}

# Every constexpr of every launched kernel and the values its launch sites pass on CUDA. A launch
# site that gains a constexpr, or a value, fails this table until it is updated here (and compiled).
B = {False, True}
EXPECTED_CONSTEXPRS = {
    "triton_impl._rows_kernel": dict(
        HAS_SOFTCAP=B, STATS=B, COEFF={0, 1, 2}, SCORE_SATURATION=B, GRAD=B, BLOCK_R={4}, BLOCK_V={2048}
    ),
    "triton_fused._logits_kernel": dict(
        HAS_BIAS=B,
        HAS_SOFTCAP=B,
        STATS=B,
        TARGET=B,
        STORE=B,
        UPCAST={False},
        DOT_PRECISION={None, "ieee", "tf32"},
        BM={128},
        BN={128},
        BK={32, 64},
    ),
    "triton_fused._finish_kernel": dict(STATS=B, TARGET_DT=B, COEFF={0, 1, 2}, SCORE_SATURATION=B, BLOCK_R={128}),
    "triton_fused._grad_hidden_kernel": dict(
        HAS_SOFTCAP=B,
        UPCAST={False},
        DOT_PRECISION={None, "ieee", "tf32"},
        BM={128},
        BN={64},
        BD={128, 256},
        TILES_PER_P={2},
    ),
    "triton_fused._grad_weight_kernel": dict(
        HAS_SOFTCAP=B,
        WANT_DW=B,
        WANT_DB=B,
        ACCUMULATE=B,
        UPCAST={False},
        DOT_PRECISION={None, "ieee", "tf32"},
        BM={64},
        BN={64},
        BD={16, 128, 256},
        TILES_PER_P={2},
    ),
    "triton_scorer._scores_kernel": dict(BLOCK_R={16}, BLOCK_D={256}),
    "triton_scorer._row_sum_kernel": dict(BLOCK_R={16}, BLOCK_D={256}),
    "triton_distill._distill_rows_kernel": dict(HAS_SOFTCAP=B, STATS=B, GRAD=B, BLOCK_R={4}, BLOCK_V={1024}),
}
HELPERS = {"triton_impl.transformed", "triton_impl.atwu_coefficient", "triton_impl.row_coefficients",
           "triton_fused._grad_tile"}  # fmt: skip
# Kernels without a spilled register in any launch today: a spill there fails the test; the others
# (the fused GEMMs) are printed only.
SPILL_FREE = {
    "triton_impl._rows_kernel",
    "triton_fused._finish_kernel",
    "triton_scorer._scores_kernel",
    "triton_scorer._row_sum_kernel",
    "triton_distill._distill_rows_kernel",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cache = tmp_path_factory.mktemp("triton-cache")  # a fresh cache: compile for real, and ptxas -v logs
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(cache), TRITON_DUMP_PTXAS_LOG="1")
    command = [sys.executable, "compile_kernels.py", *(f"--arch={a}" for a in ARCHS), *([] if EVERY else ["--cover"])]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env, cwd=HERE)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert records and "done" in records[-1], proc.stderr[-5000:]
    return records


@pytest.mark.slow
def test_launch_sites_exercise_every_kernel_and_constexpr(compiled):
    header = next(r for r in compiled if "kernels" in r)
    assert set(header["kernels"]) == set(EXPECTED_CONSTEXPRS), "a kernel was added or lost its launch site"
    assert set(header["helpers"]) == HELPERS, "a @triton.jit function is neither launched nor a known helper"
    seen = {name: {} for name in EXPECTED_CONSTEXPRS}
    for record in compiled:
        if "launch" in record:
            launch = record["launch"]
            for key, value in launch["constexprs"].items():
                seen[launch["kernel"]].setdefault(key, set()).add(value)
    for name, expected in EXPECTED_CONSTEXPRS.items():
        assert set(header["kernels"][name]) == set(expected), f"{name}: constexprs of the kernel"
        assert seen[name] == expected, f"{name}: constexpr values the launch sites pass on CUDA"
        for arch in ARCHS:
            assert any(r["launch"]["kernel"] == name and r["launch"]["arch"] == arch for r in compiled if "launch" in r)


@pytest.mark.slow
def test_every_kernel_compiles_for_a_gpu(compiled):
    failed = [r for r in compiled if "failed" in r]
    assert not failed, "\n\n".join(f"{r['failed']}\n{r['error']}" for r in failed)
    done = [r for r in compiled if "compiled" in r]
    assert {(r["compiled"]["kernel"], r["compiled"]["arch"]) for r in done} == {
        (name, arch) for name in EXPECTED_CONSTEXPRS for arch in ARCHS
    }
    print(f"\n{'kernel':36} arch  regs  spill st/ld  shared  operands / constexprs")
    for r in sorted(done, key=lambda r: (r["compiled"]["kernel"], r["compiled"]["arch"], -(r["n_regs"] or 0))):
        c = r["compiled"]
        pointers = sorted({v for v in c["signature"].values() if v.startswith("*") and v != "*fp32"}) or ["*fp32"]
        print(
            f"{c['kernel']:36} sm{c['arch']}  {r['n_regs']!s:>4}  {r['spill_stores']!s:>5}/{r['spill_loads']!s:<5}"
            f" {r['shared']:>7}  {','.join(pointers)} {c['constexprs']}"
        )
    too_big = [r for r in done if r["shared"] > MAX_SHARED[r["compiled"]["arch"]]]
    assert not too_big, "shared memory beyond the SM's: " + "; ".join(
        f"{r['compiled']['kernel']} sm{r['compiled']['arch']} {r['shared']} B {r['compiled']['constexprs']}"
        f" {r['compiled']['signature']}"
        for r in too_big
    )
    spilled = [r for r in done if r["compiled"]["kernel"] in SPILL_FREE and (r["spill_stores"] or r["spill_loads"])]
    assert not spilled, "register spills in a kernel that had none: " + "; ".join(
        f"{r['compiled']['kernel']} sm{r['compiled']['arch']} {r['spill_stores']}/{r['spill_loads']} B"
        f" {r['compiled']['constexprs']}"
        for r in spilled
    )
    assert all(r["n_regs"] is not None for r in done), "no ptxas -v log (TRITON_DUMP_PTXAS_LOG)"
