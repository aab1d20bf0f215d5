"""Search ranges of hyper-parameters, declared beside the options they range over (each method's
Params) and read by ``python -m atwu_fast.tune``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Float:
    """A real number in [low, high], sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple


Space = Float | Int | Choice
