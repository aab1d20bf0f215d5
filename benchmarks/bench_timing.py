"""Wall-clock comparison of variants inside one run, with a slack derived from the run's own noise.

Variants are timed in interleaved rounds (A, B, C, A, B, C, ...) so that a change in machine load
hits all of them alike. A claim "A ≤ r·B" is checked on the ratio of medians, with a slack of two
standard errors of that ratio estimated from the samples: the median of ``k`` samples has standard
error ≈ 1.253·σ/√k, and σ ≈ 1.4826·MAD (median absolute deviation) for roughly normal noise, so
``se_rel(A/B) = √(se_rel(A)² + se_rel(B)²)``. A noisy run therefore asserts less, a quiet run more,
and no run asserts nothing: the target itself never moves.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """``repeats`` wall-clock samples per variant, taken in interleaved rounds after ``warmup`` rounds."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + repeats):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def median_relative_se(samples: list[float]) -> float:
    """Relative standard error of the median of ``samples`` (0 with fewer than 2 samples)."""
    if len(samples) < 2:
        return 0.0
    median = statistics.median(samples)
    mad = statistics.median(abs(s - median) for s in samples)
    return 1.253 * 1.4826 * mad / math.sqrt(len(samples)) / median


def ratio_check(samples: dict[str, list[float]], numerator: str, denominator: str, target: float) -> dict:
    """``median(numerator)/median(denominator) ≤ target·(1 + 2·se)``, with its numbers."""
    ratio = statistics.median(samples[numerator]) / statistics.median(samples[denominator])
    se = math.hypot(median_relative_se(samples[numerator]), median_relative_se(samples[denominator]))
    allowed = target * (1 + 2 * se)
    return dict(ratio=ratio, target=target, relative_se=se, allowed=allowed, ok=ratio <= allowed)
