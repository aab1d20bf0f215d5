"""Peak-memory measurement: of one callable in this process, or of one variant in a fresh process.

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before the call (the caching allocator's exact high-water mark of live tensors).
* CPU: the kernel's resident-set high-water mark. Before the call we ``malloc_trim(0)`` (return freed
  heap pages to the OS), read ``VmRSS`` and reset ``VmHWM`` by writing ``5`` to
  ``/proc/self/clear_refs``; after the call ``VmHWM − VmRSS_before`` is the peak extra resident
  memory. Buffers ≥ 32 MiB are mmap-ed by glibc and unmapped on free, so the logits buffers the
  comparison is about are counted exactly; small heap reuse can only make the number larger.

In-process numbers are biased when several variants share a process: memory one variant freed but
the allocator kept (host heap, CUDA cache of another size class) serves the next variant without
raising the high-water mark. :func:`fresh_process_peak` therefore measures each variant in its own
process (:mod:`memory_probe`), which is what a user of that variant sees.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory above the pre-call level while ``fn()`` runs (results dropped before return)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return peak
    _trim_heap()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = fn()
    peak = _status_kib("VmHWM") - before
    del out
    _trim_heap()
    return peak * 1024


def fresh_process_peak(op: str, variant: str, shape: tuple[int, int, int], dtype="float32", device="cpu") -> dict:
    """``{peak_bytes, seconds, loss}`` of one forward + backward of ``variant`` in a new process."""
    n, d, v = shape
    probe = Path(__file__).resolve().parent / "memory_probe.py"
    cmd = [sys.executable, str(probe), "--op", op, "--variant", variant, "--n", str(n), "--d", str(d), "--v", str(v)]
    cmd += ["--dtype", dtype, "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
