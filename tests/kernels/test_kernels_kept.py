"""Kept logits (atwu_kernels.kept): when linear_token_nll keeps its logits, and that it then does
6 rather than 8·N'·D·V FLOPs (values are checked against float64 in test_kernels_token_nll)."""

from __future__ import annotations

import pytest
import torch
from helpers import _NEEDS_TRITON, IGNORE, assert_close, make_problem
from torch.utils.flop_counter import FlopCounterMode

from atwu_kernels import kept, linear_token_nll, weighted_linear_cross_entropy

N, D, V = 60, 16, 700


def _problem(dtype=torch.float32):
    hidden, weight, labels, _ = make_problem(N, D, V, seed=4, ignore_every=5, dtype=dtype)
    return hidden, weight, labels


def _addmm_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _gemm_flops(fn) -> int:
    """FLOPs of the matrix products in ``fn()`` (forward and backward; in-place ``addmm_`` too)."""
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops}) as counter:
        fn()
    return counter.get_total_flops()


def _nll_step(hidden, weight, labels, **kwargs):
    def run():
        nll = linear_token_nll(hidden, weight, labels, **kwargs)
        (nll * torch.linspace(-1, 2, N)).sum().backward()

    return run


def _counted(labels) -> int:
    return int((labels != IGNORE).sum())


@pytest.mark.parametrize("keep, per_flop", [(True, 6), (False, 8)])
def test_kept_logits_save_the_recomputation(keep, per_flop, monkeypatch):
    monkeypatch.setattr(kept, "block_columns", lambda vocab: 128)  # several blocks
    hidden, weight, labels = _problem()
    flops = _gemm_flops(_nll_step(hidden, weight, labels, keep_logits=keep, chunk_size=16))
    assert flops == per_flop * _counted(labels) * D * V


def test_auto_keeps_fp32_cpu_logits_within_the_budget(monkeypatch):
    hidden, weight, labels = _problem()
    assert _gemm_flops(_nll_step(hidden, weight, labels)) == 6 * _counted(labels) * D * V
    monkeypatch.setattr(kept, "KEPT_LOGITS_BUDGET", _counted(labels) * V * 4 - 1)  # one byte short
    hidden.grad = weight.grad = None
    assert _gemm_flops(_nll_step(hidden, weight, labels)) == 8 * _counted(labels) * D * V


def test_auto_recomputes_bf16():
    hidden, weight, labels = _problem(torch.bfloat16)
    assert _gemm_flops(_nll_step(hidden, weight, labels)) == 8 * _counted(labels) * D * V


def test_weighted_ce_none_reduction_passes_keep_logits():
    hidden, weight, labels = _problem()
    weights = torch.rand(N)

    def run(keep):
        def step():
            out = weighted_linear_cross_entropy(hidden, weight, labels, weights, reduction="none", keep_logits=keep)
            out.sum().backward()

        return step

    assert _gemm_flops(run(True)) == 6 * _counted(labels) * D * V
    assert _gemm_flops(run(False)) == 8 * _counted(labels) * D * V


def test_a_second_backward_recomputes_the_same_gradients(monkeypatch):
    """The first backward frees the kept blocks; retain_graph=True and a second backward recompute."""
    monkeypatch.setattr(kept, "block_columns", lambda vocab: 100)
    hidden, weight, labels = _problem()
    nll = linear_token_nll(hidden, weight, labels, keep_logits=True)
    loss = (nll * torch.linspace(-1, 2, N)).sum()
    loss.backward(retain_graph=True)
    first = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss.backward()
    for a, b, name in zip(first, (hidden.grad, weight.grad), ("hidden", "weight")):
        assert_close(b, a.double(), rtol=1e-5, what=f"second backward, grad {name}")


def test_the_auto_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fits = kept.KEPT_LOGITS_BUDGET // (4 * 1000)
    assert kept.keeps_logits(None, "torch", cpu, torch.float32, fits, 1000, 64)
    assert not kept.keeps_logits(None, "torch", cpu, torch.float32, fits + 1, 1000, 64)  # over the budget
    assert kept.keeps_logits(None, "torch", cpu, torch.float32, 128, 1000, 64)
    assert not kept.keeps_logits(None, "torch", cpu, torch.float32, 127, 1000, 64)  # N' < 2·D
    assert not kept.keeps_logits(None, "torch", cpu, torch.bfloat16, 128, 1000, 64)
    assert not kept.keeps_logits(None, "torch", cuda, torch.float32, 128, 1000, 64)
    assert not kept.keeps_logits(None, "triton", cuda, torch.float32, 128, 1000, 64)
    assert kept.keeps_logits(True, "torch", cuda, torch.bfloat16, 10, 10**6, 4096)
    assert not kept.keeps_logits(False, "torch", cpu, torch.float32, 128, 1000, 64)


def test_auto_recomputes_when_fewer_rows_than_twice_the_hidden_size():
    """Below N' = 2·D the dW slices and their concatenation (2·V·D) would outweigh the kept logits."""
    hidden, weight, labels, _ = make_problem(20, 16, V, seed=4)
    assert _gemm_flops(lambda: linear_token_nll(hidden, weight, labels).sum().backward()) == 8 * 20 * 16 * V


def test_keep_logits_true_takes_the_torch_backend_whatever_the_default(monkeypatch):
    monkeypatch.setenv("ATWU_KERNELS_IMPL", "triton")  # what impl=None would otherwise use
    hidden, weight, labels = _problem()
    assert _gemm_flops(_nll_step(hidden, weight, labels, keep_logits=True)) == 6 * _counted(labels) * D * V


@pytest.mark.parametrize("keep", [True, False])
def test_a_masked_block_of_the_vocabulary(monkeypatch, keep):
    """Logits of −inf over a whole kept block (37 columns) or a whole 8192-column slice of a chunk (a
    masked vocabulary range): finite NLL and gradients, equal to F.cross_entropy's."""
    monkeypatch.setattr(kept, "block_columns", lambda vocab: min(vocab, 37))
    check_masked_vocabulary(keep)


def check_masked_vocabulary(keep: bool) -> None:
    vocab = 8192 + 100
    hidden, weight, labels, _ = make_problem(12, 8, vocab, seed=6)
    bias = torch.zeros(vocab)
    bias[:8192] = float("-inf")  # the first slice of a chunk and many whole blocks
    labels = 8192 + labels % 100
    upstream = torch.linspace(-1, 2, 12)
    nll = linear_token_nll(hidden, weight, labels, bias=bias, keep_logits=keep)
    (nll * upstream).sum().backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(h64 @ w64.t() + bias.double(), labels, reduction="none")
    (ref * upstream.double()).sum().backward()
    assert torch.isfinite(nll).all() and torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    assert_close(nll, ref, what="nll")
    assert_close(hidden.grad, h64.grad, what="grad hidden")
    assert_close(weight.grad, w64.grad, what="grad weight")


def test_kept_logits_are_freed_without_a_backward(monkeypatch):
    """No reference cycle holds the kept blocks once the output is dropped (cyclic GC off)."""
    import gc
    import weakref

    monkeypatch.setattr(kept, "block_columns", lambda vocab: 100)
    hidden, weight, labels, _ = make_problem(N, D, V, seed=4)  # no ignored row: the output is the kept NLL
    nll = linear_token_nll(hidden, weight, labels, keep_logits=True)
    node = nll.grad_fn.next_functions[0][0]  # past the reshape: the op's autograd node
    block = weakref.ref(node.kept.kept.blocks[0][1])
    del node
    gc.disable()
    try:
        del nll
        assert block() is None
    finally:
        gc.enable()


def test_block_columns():
    assert kept.block_columns(50) == 50
    assert kept.block_columns(32000) == kept.BLOCK_COLUMNS == 2048
    assert kept.BLOCK_COLUMNS % 128 == 0


@_NEEDS_TRITON
def test_keeping_needs_the_torch_backend():
    hidden, weight, labels = _problem()
    with pytest.raises(ValueError, match="keep_logits=True needs impl='torch'"):
        linear_token_nll(hidden, weight, labels, keep_logits=True, impl="triton")
