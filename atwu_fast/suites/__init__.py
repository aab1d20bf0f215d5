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
from .tofu.tiny import TINY, TOFU_TINY, TinyTofuSuite

SUITES: dict[str, type[Suite]] = {}


def register_suite(suite: type[Suite]) -> type[Suite]:
    """Make ``suite`` selectable as ``--benchmark <suite.name>`` (usable as a class decorator)."""
    if not suite.name:
        raise ValueError(f"{suite.__name__} has no name")
    SUITES[suite.name] = suite
    return suite


for _suite in (SyntheticSuite, TofuSuite, RwkuSuite, JsonlSuite):
    register_suite(_suite)


def suite_class(bcfg) -> type[Suite]:
    """The suite a ``benchmark`` section names (TOFU with model ``tiny``: the laptop-scale protocol)."""
    if bcfg.name == TofuSuite.name and bcfg.model == TINY:
        return TinyTofuSuite
    return SUITES[bcfg.name]


def make_suite(cfg) -> Suite:
    """The suite ``cfg.benchmark`` names, over the whole experiment config ``cfg``."""
    return suite_class(cfg.benchmark)(cfg)


def suite_sections() -> dict[str, type]:
    """Config section name -> dataclass of every registered benchmark's own sections (shared ones once)."""
    sections: dict[str, type] = {}
    for suite in (*SUITES.values(), TinyTofuSuite):
        for name, cls in suite.sections.items():
            sections.setdefault(name, cls)
    return sections


def check_sections_apply(cfg) -> None:
    """Refuse a benchmark's own option set for another benchmark (``--rwku.targets 3 --benchmark tofu``):
    every section of ``cfg`` that the chosen benchmark does not read must keep its defaults."""
    from dataclasses import asdict

    from ..config import ConfigError

    def label(suite: type[Suite]) -> str:
        return TOFU_TINY if suite is TinyTofuSuite else suite.name

    chosen = suite_class(cfg.benchmark)
    for name, cls in suite_sections().items():
        if name in chosen.sections or not hasattr(cfg, name):
            continue
        default, value = asdict(cls()), asdict(getattr(cfg, name))
        changed = [key for key in value if value[key] != default[key]]
        if changed:
            owner = next(label(s) for s in (*SUITES.values(), TinyTofuSuite) if name in s.sections)
            raise ConfigError(f"--{name}.{changed[0]} is an option of --benchmark {owner}; it does not apply to "
                              f"--benchmark {label(chosen)}")


def load_benchmark(bcfg, options=None, with_eval: bool = True) -> BenchmarkData:
    """The rows of the real benchmark a ``benchmark`` config section names (no model, no tokenizer);
    ``options``: the benchmark's own section (default: its defaults)."""
    from types import SimpleNamespace

    from ..data.readers import DataError

    if bcfg.name not in SUITES or bcfg.name == "synthetic":
        raise DataError(f"unknown benchmark '{bcfg.name}'; choose from {', '.join(n for n in SUITES if n != 'synthetic')}")
    suite = SUITES[bcfg.name]
    sections = {name: cls() for name, cls in suite.sections.items()}
    if options is not None:
        sections[bcfg.name] = options
    return suite(SimpleNamespace(benchmark=bcfg, **sections)).read(with_eval)


__all__ = ["SUITES", "BenchmarkData", "Evaluation", "Suite", "check_sections_apply", "load_benchmark", "make_suite",
           "register_suite", "suite_class", "suite_sections"]
