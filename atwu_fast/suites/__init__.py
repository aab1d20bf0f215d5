"""The benchmarks one driver runs, by name: the embedded ``synthetic`` one, ``tofu``, ``rwku`` and
``jsonl``, each one folder here (see :class:`~atwu_fast.suites.base.Suite` for what a benchmark
provides); ``tofu`` with ``--model tiny`` is TOFU's whole protocol at laptop scale (:mod:`.tofu.tiny`).
A new benchmark is a folder plus one :func:`register_suite` line."""

from __future__ import annotations

from .base import BenchmarkData, Evaluation, Suite
from .jsonl.suite import JsonlSuite
from .rwku.suite import RwkuSuite
from .synthetic import SyntheticSuite
from .tofu.suite import TofuSuite
from .tofu.tiny import TINY, TinyTofuSuite

SUITES: dict[str, type[Suite]] = {}


def register_suite(suite: type[Suite]) -> type[Suite]:
    """Make ``suite`` selectable as ``--benchmark <suite.name>`` (usable as a class decorator)."""
    if not suite.name:
        raise ValueError(f"{suite.__name__} has no name")
    SUITES[suite.name] = suite
    return suite


for _suite in (SyntheticSuite, TofuSuite, RwkuSuite, JsonlSuite):
    register_suite(_suite)


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


__all__ = ["SUITES", "BenchmarkData", "Evaluation", "Suite", "load_benchmark", "make_suite", "register_suite"]
