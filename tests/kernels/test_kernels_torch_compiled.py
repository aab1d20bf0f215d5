"""The CPU row ops compiled with torch.compile: the same float64-checked results as the eager ones
(every transform, the ATWU head), used only for large chunks unless forced, and a compiler failure
warns once and falls back to the eager ops."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch
from helpers import make_problem
from test_kernels_atwu_head import _check_head
from test_kernels_kept import check_masked_vocabulary
from test_kernels_token_nll import _check_token_nll

from atwu_kernels import kept, linear_token_nll, torch_impl
from atwu_kernels.torch_impl import COMPILE_ENV, COMPILE_MIN_ELEMENTS

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None and not os.environ.get("CI"),
    reason="torch.compile on CPU needs a C++ compiler (CI requires one)")


@pytest.fixture
def compile_state(monkeypatch):
    """The module's compile state, restored afterwards (a test may mark compiling as failed)."""
    saved = dict(torch_impl._compile_state)
    yield torch_impl._compile_state
    torch_impl._compile_state.clear()
    torch_impl._compile_state.update(saved)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("softcap, logit_scale, bias", [(None, None, False), (2.0, None, False), (None, 0.37, True),
                                                         (5.0, 1.7, True)])
def test_compiled_row_ops_match_the_float64_reference(monkeypatch, compile_state, softcap, logit_scale, bias):
    monkeypatch.setenv(COMPILE_ENV, "1")
    monkeypatch.setattr(kept, "block_columns", lambda vocab: min(vocab, 37))  # kept logits: several blocks
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile failure would fall back silently to eager
        for keep in (True, False):  # the token NLL's logits kept for backward, and recomputed
            _check_token_nll("torch", keep, 61, 32, 517, chunk=32, softcap=softcap, logit_scale=logit_scale,
                             bias=bias, seed=3)  # fmt: skip
            check_masked_vocabulary(keep)  # −inf over whole blocks and a whole first slice
        _check_head("torch", 53, 16, 211, chunk=16, softcap=softcap, logit_scale=logit_scale, bias=bias)
    assert compile_state["kernels"] is not None and not compile_state["failed"]


def spy_compiled(monkeypatch) -> list:
    calls: list = []
    real = torch_impl._run_compiled
    monkeypatch.setattr(torch_impl, "_run_compiled", lambda *args: (calls.append(args[0]), real(*args))[1])
    return calls


def test_small_chunks_stay_eager_by_default_and_0_turns_it_off(monkeypatch, compile_state):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    calls = spy_compiled(monkeypatch)
    hidden, weight, labels, _ = make_problem(64, 16, 300, seed=1)
    for keep in (True, False):
        linear_token_nll(hidden, weight, labels, chunk_size=32, keep_logits=keep).sum().backward()
    assert calls == []  # 64 x 300 kept logits, 32 x 300 per chunk: far below the threshold
    assert 32 * 300 < COMPILE_MIN_ELEMENTS
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert not torch_impl._use_compiled(torch.empty(COMPILE_MIN_ELEMENTS, 1))
    monkeypatch.setenv(COMPILE_ENV, "auto")
    assert torch_impl._use_compiled(torch.empty(COMPILE_MIN_ELEMENTS, 1))  # a large chunk compiles
    assert not torch_impl._use_compiled(torch.empty(COMPILE_MIN_ELEMENTS - 1, 1))


def test_a_compiler_failure_warns_once_and_falls_back_to_the_eager_ops(monkeypatch, compile_state):
    hidden, weight, labels, _ = make_problem(40, 16, 200, seed=2)
    monkeypatch.setenv(COMPILE_ENV, "0")
    eager = linear_token_nll(hidden, weight, labels, chunk_size=16)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setenv(COMPILE_ENV, "1")
    compile_state.update(kernels=(broken, broken), failed=False)
    with pytest.warns(RuntimeWarning, match="torch.compile of the CPU row ops failed") as record:
        first = linear_token_nll(hidden, weight, labels, chunk_size=16)
        second = linear_token_nll(hidden, weight, labels, chunk_size=16)
    assert len([w for w in record if "torch.compile" in str(w.message)]) == 1
    assert compile_state["failed"]
    assert torch.equal(first, eager) and torch.equal(second, eager)  # the eager ops, bit for bit
