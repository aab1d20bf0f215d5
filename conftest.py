"""Test-session setup: offline hubs, and the Triton interpreter when no GPU is present.

TRITON_INTERPRET must be set before any module that defines a Triton kernel is imported,
because ``triton.jit`` reads it at decoration time.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_shipped_tuned_values(monkeypatch):
    """In-process runs use each option's default, not the embedded benchmark's shipped tuned values:
    the tests check mechanics at fixed hyper-parameters (tests/e2e/test_tuned_defaults.py checks the
    tuned-values path with a file of its own; subprocess runs compare like with like)."""
    from atwu_fast.suites.synthetic import SyntheticSuite

    monkeypatch.setattr(SyntheticSuite, "tuned_file", None)
