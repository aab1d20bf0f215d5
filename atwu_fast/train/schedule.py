"""Learning-rate schedules as ``LambdaLR`` factors."""

from __future__ import annotations

from collections.abc import Callable


def warmup_lambda(warmup_steps: int, total_steps: int, schedule: str = "constant") -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "linear":
            return max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))
        return 1.0

    return factor
