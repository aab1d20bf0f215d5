"""Compile every launched Triton kernel of atwu_kernels for NVIDIA GPUs, without a GPU.

Run as a script in a process with ``TRITON_INTERPRET=0`` (``test_kernels_compile.py`` does):

1. every ``@triton.jit`` kernel launched in the Triton modules (found from the ``kernel[grid](...)``
   calls in their source) gets a recorder in place of its launcher;
2. the public ops run on tiny CPU tensors with the modules' ``triton_interpreting`` answering
   ``False`` — so they pick the GPU tiles, warps, stages, ``UPCAST`` and ``DOT_PRECISION`` a CUDA
   run picks — over dtypes (bf16, fp16, fp32, autocast over fp32 parameters), transforms, bias,
   gradient needs, one or several chunks and TF32 on/off; each launch is bound the way
   ``JITFunction.run`` binds it for a CUDA target (signature, constexprs, alignment attributes,
   options);
3. the distinct launches are compiled with ``triton.compile`` for each ``--arch`` (PTX, then ptxas
   with ``-v``, whose register and spill counts are reported).

Prints one JSON object per line: ``{"launch": ...}`` per distinct launch, ``{"compiled": ...}`` per
compilation (or ``{"failed": ...}``), and a final ``{"done": ...}``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import json
import os
import re
import sys
import time

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without the interpreter"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from atwu_kernels import (  # noqa: E402
    atwu_head,
    dispatch,
    linear_distillation,
    linear_token_nll,
    triton_distill,
    triton_fused,
    triton_impl,
    triton_scorer,
    weighted_linear_cross_entropy,
)

MODULES = (triton_impl, triton_fused, triton_scorer, triton_distill)


def launched_kernels() -> dict[str, JITFunction]:
    """``module.kernel`` → kernel, for every ``kernel[grid](...)`` call in the Triton modules' source."""
    found = {}
    for module in MODULES:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                target = node.func.value
                if isinstance(target, ast.Name) and isinstance(getattr(module, target.id, None), JITFunction):
                    found[f"{module.__name__.rsplit('.', 1)[-1]}.{target.id}"] = getattr(module, target.id)
    return found


def constexpr_names(kernel: JITFunction) -> set[str]:
    return {p.name for p in kernel.params if p.is_constexpr}


class Recorder:
    """Stands in for ``JITFunction.run``: binds a launch for each target as a CUDA launch would."""

    def __init__(self, name: str, kernel: JITFunction, archs: list[int]):
        self.name, self.kernel = name, kernel
        self.backends = {arch: make_backend(GPUTarget("cuda", arch, 32)) for arch in archs}
        self.binders = {
            arch: create_function_from_signature(kernel.signature, kernel.params, backend)
            for arch, backend in self.backends.items()
        }
        self.launches: dict[tuple, dict] = {}

    def __call__(self, *args, grid, warmup, **kwargs):
        kernel = self.kernel
        kwargs["debug"] = kwargs.get("debug", kernel.debug) or triton.knobs.runtime.debug
        kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = triton.knobs.compilation.fpsan_homomorphic_casts
        for arch, backend in self.backends.items():
            bound, specialization, options = self.binders[arch](*args, **kwargs)
            options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
            names = [p.name for p in kernel.params]
            consts = {names[path[0]]: value for path, value in constexprs.items()}
            launch_options = dict(num_warps=options.num_warps, num_stages=options.num_stages)
            # one compilation per distinct signature, constexpr values and launch options (the
            # alignment attributes of the first such launch: the sizes here are multiples of 16)
            key = (
                arch,
                tuple(signature.items()),
                tuple(sorted(consts.items(), key=str)),
                tuple(launch_options.items()),
            )
            self.launches.setdefault(
                key,
                dict(
                    kernel=self.name,
                    arch=arch,
                    signature={k: v for k, v in signature.items() if v != "constexpr"},
                    constexprs=consts,
                    options=launch_options,
                    attrs=attrs,
                    compile_options=options.__dict__,
                ),
            )
        return None


def drive() -> None:
    """Run the public ops with GPU launch configurations on CPU tensors (nothing is launched)."""
    gen = torch.Generator().manual_seed(0)
    n, d, v = 48, 64, 256  # 48 rows, chunk 32: a full and a partial chunk

    def leaf(*shape, dtype, grad=True):
        return (torch.randn(*shape, generator=gen) * 0.1).to(dtype).requires_grad_(grad)

    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::7] = -100
    is_forget = torch.arange(n) % 3 == 0
    cases = [(dtype, None) for dtype in (torch.bfloat16, torch.float16, torch.float32)]
    cases += [(torch.float32, amp) for amp in (torch.bfloat16, torch.float16)]  # fp32 parameters, autocast
    for (dtype, amp), impl, softcap, with_bias, chunk, tf32 in (
        (case, name, softcap, with_bias, chunk, tf32)
        for case in cases
        for name in ("triton", "triton_fused")
        for softcap in (None, 30.0)
        for with_bias in (False, True)
        for chunk in (None, 32)
        for tf32 in ((False, True) if case == (torch.float32, None) and name == "triton_fused" else (False,))
    ):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        common = dict(softcap=softcap, logit_scale=0.5, chunk_size=chunk, impl=impl)
        amp_ctx = torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()
        # which of (hidden, weight, bias) require grad: all; hidden alone; the bias alone
        needs = [(True, True, True), (True, False, False), (False, False, True)] if with_bias else [(True, True, False)]
        for need_h, need_w, need_b in needs:
            hidden, weight = leaf(n, d, dtype=dtype, grad=need_h), leaf(v, d, dtype=dtype, grad=need_w)
            bias = leaf(v, dtype=dtype, grad=need_b) if with_bias else None
            with amp_ctx:
                nll = linear_token_nll(hidden, weight, labels, bias=bias, **common)
                with torch.no_grad():
                    linear_token_nll(hidden, weight, labels, bias=bias, **common)
                token_weights = torch.rand(n, generator=gen)
                loss = weighted_linear_cross_entropy(hidden, weight, labels, token_weights, bias=bias, **common)
                with torch.no_grad():
                    weighted_linear_cross_entropy(hidden, weight, labels, token_weights, bias=bias, **common)
            (nll.sum() + loss).backward()
            for saturation in ("score", "raw"):
                scorer_w, scorer_b = leaf(d, dtype=torch.float32, grad=False), leaf(1, dtype=torch.float32, grad=False)
                with amp_ctx:
                    out = atwu_head(
                        hidden,
                        weight,
                        labels,
                        is_forget,
                        scorer_w,
                        scorer_b,
                        saturation=saturation,
                        bias=bias,
                        **common,
                    )
                out.loss.backward()
                with torch.no_grad(), amp_ctx:
                    atwu_head(
                        hidden,
                        weight,
                        labels,
                        is_forget,
                        scorer_w,
                        scorer_b,
                        saturation=saturation,
                        bias=bias,
                        **common,
                    )
        if impl == "triton" and not with_bias and amp is None:  # the distillation op has impl="triton" only
            for shift in (0.0, 2.5):
                hidden, weight = leaf(n, d, dtype=dtype), leaf(v, d, dtype=dtype)
                teacher_h, teacher_w = leaf(n, d, dtype=dtype, grad=False), leaf(v, d, dtype=dtype, grad=False)
                loss, _ = linear_distillation(
                    hidden, weight, teacher_h, teacher_w, labels, shift=shift, softcap=softcap, logit_scale=0.5,
                    chunk_size=chunk or 4096, impl="triton",
                )  # fmt: skip
                loss.sum().backward()
    torch.backends.cuda.matmul.allow_tf32 = False


PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_launch(kernel: JITFunction, launch: dict) -> dict:
    target = GPUTarget("cuda", launch["arch"], 32)
    names = [p.name for p in kernel.params]
    signature = {name: launch["signature"].get(name, "constexpr") for name in names}
    constexprs = {(names.index(k),): v for k, v in launch["constexprs"].items()}
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG=1: ptxas -v prints here
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs, launch["attrs"]), target=target, options=launch["compile_options"]
        )
    assert compiled.asm["ptx"] and compiled.asm["cubin"]
    regs = [int(x) for x in PTXAS_REGS.findall(log.getvalue())]
    spills = [(int(a), int(b)) for a, b in PTXAS_SPILLS.findall(log.getvalue())]
    return dict(
        seconds=round(time.perf_counter() - start, 2),
        n_regs=max(regs) if regs else None,
        spill_stores=max((s for s, _ in spills), default=None),
        spill_loads=max((ld for _, ld in spills), default=None),
        shared=compiled.metadata.shared,
    )


def features(launch: dict) -> set:
    return {
        (launch["arch"],),
        *((launch["arch"], "arg", k, v) for k, v in launch["signature"].items()),
        *((launch["arch"], "const", k, repr(v)) for k, v in launch["constexprs"].items()),
        *((launch["arch"], "option", k, v) for k, v in launch["options"].items()),
    }


def covering(launches: list[dict]) -> list[dict]:
    """Greedy subset in which every argument type, constexpr value and option of ``launches`` occurs."""
    todo = set().union(*map(features, launches)) if launches else set()
    chosen = []
    while todo:
        best = max(launches, key=lambda launch: len(features(launch) & todo))
        chosen.append(best)
        todo -= features(best)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, action="append", default=None, help="compute capability ×10 (90, 80)")
    parser.add_argument("--list", action="store_true", help="record the launches only, compile nothing")
    parser.add_argument(
        "--cover", action="store_true", help="compile a subset covering every constexpr value, dtype and option"
    )
    args = parser.parse_args()
    archs = args.arch or [90]

    kernels = launched_kernels()
    recorders = {}
    for name, kernel in kernels.items():
        recorders[name] = Recorder(name, kernel, archs)
        kernel.run = recorders[name]  # the instance attribute shadows JITFunction.run: kernel[grid](...) records
    # the ops accept CPU tensors for the Triton backends (as under the interpreter) ...
    dispatch.triton_interpreting = lambda: True
    for module in MODULES:  # ... while the kernel modules choose what they choose on CUDA
        module.triton_interpreting = lambda: False
    drive()

    helpers = sorted(
        f"{module.__name__.rsplit('.', 1)[-1]}.{name}"
        for module in MODULES
        for name, value in vars(module).items()
        if isinstance(value, JITFunction)
        and value.__module__ == module.__name__
        and f"{module.__name__.rsplit('.', 1)[-1]}.{name}" not in kernels
    )
    print(json.dumps(dict(kernels={name: sorted(constexpr_names(k)) for name, k in kernels.items()}, helpers=helpers)))
    failures = 0
    for name, recorder in recorders.items():
        launches = list(recorder.launches.values())
        for launch in launches:
            shown = {k: launch[k] for k in ("kernel", "arch", "signature", "constexprs", "options")}
            print(json.dumps(dict(launch=shown)), flush=True)
        if args.cover:
            launches = covering(launches)
        for launch in launches:
            shown = {k: launch[k] for k in ("kernel", "arch", "signature", "constexprs", "options")}
            if args.list:
                continue
            try:
                result = compile_launch(kernels[name], launch)
            except Exception as exc:  # noqa: BLE001 — report every failure, not just the first
                failures += 1
                message = f"{type(exc).__name__}: {exc}"[-4000:]
                print(json.dumps(dict(failed=shown, error=message)), flush=True)
                continue
            print(json.dumps(dict(compiled=shown, **result)), flush=True)
    print(json.dumps(dict(done=dict(kernels=sorted(kernels), failures=failures))), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
