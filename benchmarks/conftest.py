"""Benchmark runs record what produced them: ``--benchmark-json FILE`` results carry the command line
and the versions of torch, triton and the peers beside pytest-benchmark's machine facts (CPU model,
Python), so a result kept under ``benchmarks/results/`` says how to reproduce it."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["command"] = " ".join(["python -m pytest", *sys.argv[1:]])
    machine_info["versions"] = {name: _version(name) for name in
                                ("torch", "triton", "transformers", "liger-kernel", "cut-cross-entropy", "atwu-fast")}
