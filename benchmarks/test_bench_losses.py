"""Speed and peak memory of the fused losses vs the naive materialised-logits path.

``pytest benchmarks/`` — claims are ratios measured inside one run (``benchmark.extra_info``);
absolute timings can be compared across commits with ``--benchmark-compare``.
On CUDA the default dispatch (Triton row kernels) is used; on CPU the chunked torch path.
Method for memory: see :mod:`bench_memory`.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from atwu_kernels import atwu_head, linear_token_nll, weighted_linear_cross_entropy
from bench_memory import peak_memory_bytes

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
# timing shape (small on CPU to keep the suite short) and the memory-target shape
TIMING_SHAPE = (4096, 4096, 128256) if ON_CUDA else (2048, 256, 8192)
MEMORY_SHAPE = (8192, 512, 32000)
DTYPE = torch.bfloat16 if ON_CUDA else torch.float32
MEMORY_TARGET = 0.10  # chunked peak ≤ 1/10 of naive at MEMORY_SHAPE


def _inputs(n, d, v, dtype=DTYPE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=gen)).to(DEVICE, dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=gen) / d**0.5).to(DEVICE, dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    labels[::7] = -100
    token_weights = torch.rand(n, generator=gen).to(DEVICE)
    is_forget = (torch.rand(n, generator=gen) < 0.5).to(DEVICE)
    return hidden, weight, labels, token_weights, is_forget


def _naive_token_loss(hidden, weight, labels, token_weights):
    logits = (hidden @ weight.t()).float()
    nll = F.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    return (nll * token_weights).sum()


def _chunked_token_loss(hidden, weight, labels, token_weights):
    return (linear_token_nll(hidden, weight, labels) * token_weights).sum()


def _fused_weighted_loss(hidden, weight, labels, token_weights):
    return weighted_linear_cross_entropy(hidden, weight, labels, token_weights, reduction="sum")


def _naive_head_loss(hidden, weight, labels, is_forget, sw, sb):
    logits = (hidden @ weight.t()).float()
    nll = F.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    valid = labels != -100
    forget, retain = is_forget & valid, ~is_forget & valid
    g = torch.sigmoid(hidden.detach().float() @ sw + sb)
    sat = torch.exp(-5.0 * g * nll.detach())
    return (nll * retain).sum() / retain.sum().clamp_min(1) - (g * sat * nll * forget).sum() / forget.sum().clamp_min(1)


def _fused_head_loss(hidden, weight, labels, is_forget, sw, sb):
    return atwu_head(hidden, weight, labels, is_forget, sw, sb).loss


def _step(loss_fn, hidden, weight, *args):
    """Forward + backward; returns the gradients so the peak includes them."""
    hidden.grad = weight.grad = None
    loss_fn(hidden, weight, *args).backward()
    return hidden.grad, weight.grad


def _sync():
    if ON_CUDA:
        torch.cuda.synchronize()


def _median_seconds(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _scorer(d):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(d, generator=gen) * 0.1).to(DEVICE), torch.zeros((), device=DEVICE)


CASES = {
    "token_nll": (_chunked_token_loss, _naive_token_loss, "token_weights"),
    "weighted_ce": (_fused_weighted_loss, _naive_token_loss, "token_weights"),
    "atwu_head": (_fused_head_loss, _naive_head_loss, "head"),
}


def _case_args(kind, tensors, d):
    hidden, weight, labels, token_weights, is_forget = tensors
    if kind == "head":
        return (hidden, weight, labels, is_forget, *_scorer(d))
    return (hidden, weight, labels, token_weights)


@pytest.mark.parametrize("case", list(CASES))
def test_speed_vs_naive(benchmark, case):
    fused_fn, naive_fn, kind = CASES[case]
    n, d, v = TIMING_SHAPE
    args = _case_args(kind, _inputs(n, d, v), d)
    repeats = 5 if ON_CUDA else 2
    naive_s = _median_seconds(lambda: _step(naive_fn, *args), repeats)
    chunked_torch_s = None
    if ON_CUDA and case == "token_nll":
        chunked_torch_s = _median_seconds(
            lambda: _step(lambda h, w, y, tw: (linear_token_nll(h, w, y, impl="torch") * tw).sum(), *args), repeats
        )
    # the ratio compares two medians taken the same way in this run; pytest-benchmark records the
    # fused path as well (and still runs it once under --benchmark-disable, where it keeps no stats)
    fused_s = _median_seconds(lambda: _step(fused_fn, *args), repeats)
    benchmark.pedantic(lambda: _step(fused_fn, *args), rounds=repeats, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        shape=dict(n=n, d=d, v=v),
        dtype=str(DTYPE),
        device=torch.cuda.get_device_name() if ON_CUDA else "cpu",
        naive_median_s=naive_s,
        fused_median_s=fused_s,
        time_ratio_fused_over_naive=fused_s / naive_s,
    )
    if chunked_torch_s is not None:
        benchmark.extra_info["time_ratio_triton_over_chunked_torch"] = fused_s / chunked_torch_s
    print(f"\n{case}: fused {fused_s * 1e3:.1f} ms, naive {naive_s * 1e3:.1f} ms, ratio {fused_s / naive_s:.2f}")


# weighted_ce shares atwu_head's gradient-in-forward sweep, so two cases cover both sweeps here.
@pytest.mark.parametrize("case", ["token_nll", "atwu_head"])
def test_peak_memory_vs_naive(benchmark, case):
    """Target: the chunked path's forward+backward peak ≤ 1/10 of the naive path's."""
    fused_fn, naive_fn, kind = CASES[case]
    n, d, v = MEMORY_SHAPE
    args = _case_args(kind, _inputs(n, d, v), d)
    naive_peak = peak_memory_bytes(lambda: _step(naive_fn, *args), DEVICE)
    fused_peak = benchmark.pedantic(
        lambda: peak_memory_bytes(lambda: _step(fused_fn, *args), DEVICE), rounds=1, iterations=1
    )
    ratio = fused_peak / naive_peak
    benchmark.extra_info.update(
        shape=dict(n=n, d=d, v=v),
        dtype=str(DTYPE),
        method="cuda max_memory_allocated" if ON_CUDA else "VmHWM after clear_refs (see bench_memory.py)",
        naive_peak_mib=naive_peak / 2**20,
        fused_peak_mib=fused_peak / 2**20,
        memory_ratio_fused_over_naive=ratio,
    )
    print(f"\n{case}: fused peak {fused_peak / 2**20:.0f} MiB, naive {naive_peak / 2**20:.0f} MiB, ratio {ratio:.3f}")
    assert ratio <= MEMORY_TARGET
