"""The benchmarks one driver runs, by name: the embedded ``synthetic`` one, ``tofu``, ``rwku`` and
``jsonl`` (see :class:`~atwu_fast.suites.base.Suite` for what a benchmark provides); ``tofu`` with
``--model tiny`` is TOFU's whole protocol at laptop scale (:mod:`.tofu_tiny`)."""

from __future__ import annotations

from .base import BenchmarkData, Evaluation, Suite
from .jsonl import JsonlSuite
from .rwku import RwkuSuite
from .synthetic import SyntheticSuite
from .tofu import TofuSuite
from .tofu_tiny import TINY, TinyTofuSuite

SUITES: dict[str, type[Suite]] = {s.name: s for s in (SyntheticSuite, TofuSuite, RwkuSuite, JsonlSuite)}


def make_suite(cfg) -> Suite:
    """The suite ``cfg.benchmark.name`` names, over the whole experiment config ``cfg``."""
    if cfg.benchmark.name == TofuSuite.name and cfg.benchmark.model == TINY:
        return TinyTofuSuite(cfg)
    return SUITES[cfg.benchmark.name](cfg)


def load_benchmark(bcfg, with_eval: bool = True) -> BenchmarkData:
    """The rows of the real benchmark a ``benchmark`` config section names (no model, no tokenizer)."""
    from types import SimpleNamespace

    from ..data.readers import DataError

    if bcfg.name not in SUITES or bcfg.name == "synthetic":
        raise DataError(f"unknown benchmark '{bcfg.name}'; choose from {', '.join(n for n in SUITES if n != 'synthetic')}")
    return SUITES[bcfg.name](SimpleNamespace(benchmark=bcfg)).read(with_eval)


__all__ = ["SUITES", "BenchmarkData", "Evaluation", "Suite", "load_benchmark", "make_suite"]
