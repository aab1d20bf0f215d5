"""Kept logits: the forward's logits held for the backward, in column blocks (torch backend).

:class:`~atwu_kernels.chunked.LinearTokenNLL` normally keeps only ``lse`` and recomputes each
chunk's logits in backward, because the upstream gradient ``g`` is unknown in forward: 8·N·D·V
FLOPs. When the logits may stay in memory (``keep_logits``, :func:`keeps_logits`), backward needs
only the two gradient GEMMs — 6·N·D·V FLOPs, like a materialised-logits path — and this module
holds them so that its peak stays below that path's:

* the logits of the counted rows are kept as **column blocks** ``Z_b = H W_bᵀ (+ b_b)``
  (``N' × w`` each, ``w`` columns of the vocabulary, ``N'·V·s`` bytes in all);
* forward: per block, the block's log-sum-exp; ``lse = logaddexp`` over blocks (exact: a
  log-sum-exp of disjoint column sets), and the label's logit from the block that holds it;
* backward, per block: ``Z_b ← G_b = c ⊙ (softmax − onehot)·dt/dz`` in place, then
  ``dH += G_b W_b``, ``dW_b = G_bᵀ H`` (a whole slice of ``dW`` from one GEMM: no accumulation
  across blocks), ``db_b = Σ_rows G_b``; the block is then freed. ``dW`` is assembled from its
  slices after the last block, so the kept logits and ``dW`` are never both whole in memory:
  the peak is ``max(N'·V·s + w·D·s, 2·V·D·s)`` (one block's slice of ``dW``; at the end the
  slices and their concatenation), below (for N' > D) the ``N'·V·s + V·D·s`` of a materialised-logits path
  that keeps its logits and then forms ``dW``.

Blocks are :data:`BLOCK_COLUMNS` wide: on CPU, widths from 512 to 8192 columns timed within a few
percent of each other at N' = 1755 and 7022 counted rows (``python benchmarks/kept_block_width.py``,
kept in ``benchmarks/results/``), so one width serves every vocabulary: wide enough for efficient
GEMMs and few read-modify-writes of the fp32 ``dH``, narrow enough to leave many blocks to free.

The row work is :mod:`atwu_kernels.torch_impl`'s (compiled on CPU for large problems), applied
to a block with the labels shifted by the block's first column. The same ``Σ_i c_i ℓ_i`` form
serves every op: ``c_i = g_i`` for the NLL's backward (:mod:`atwu_kernels.coefficients`).
"""

from __future__ import annotations

import torch

from . import torch_impl
from .gemm_accumulate import linear_logits
from .transform import LogitTransform

KEPT_LOGITS_BUDGET = 1 << 30  # bytes of kept logits ``keep_logits=None`` allows (CPU, torch backend)
BLOCK_COLUMNS = 2048  # vocabulary columns per kept block


def keeps_logits(keep_logits: bool | None, backend_name: str, device: torch.device, compute_dtype: torch.dtype,
                 n_rows: int, vocab: int, dim: int) -> bool:  # fmt: skip
    """Does a call keep its logits? An explicit choice is followed; ``None`` (auto) keeps them on
    CPU with the torch backend in fp32 when ``N'·V·4`` bytes fit :data:`KEPT_LOGITS_BUDGET` and
    ``N' ≥ 2·D`` (then ``2·V·D``, the ``dW`` slices and their concatenation, is at most the kept
    logits, so the peak is the kept logits plus one ``dW`` slice). On CUDA memory is what the fused
    losses are for, so the default there never keeps."""
    if keep_logits is not None:
        return bool(keep_logits)
    return (
        backend_name == "torch"
        and device.type == "cpu"
        and compute_dtype == torch.float32
        and n_rows * vocab * 4 <= KEPT_LOGITS_BUDGET
        and n_rows >= 2 * dim
    )


def block_columns(vocab: int) -> int:
    """Columns per kept block: :data:`BLOCK_COLUMNS`, or ``V`` when smaller."""
    return min(vocab, BLOCK_COLUMNS)


class KeptLogits:
    """The counted rows' logits in column blocks, their ``lse`` and ``nll``; gradients once."""

    def __init__(self, hidden, weight, bias, labels, valid, transform: LogitTransform):
        self.hidden, self.weight, self.bias, self.labels, self.valid = hidden, weight, bias, labels, valid
        self.transform = transform
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        self.width = block_columns(vocab)
        self.elements = n_rows * vocab  # decides compiled vs eager row ops, as for a whole chunk
        self.scratch = torch_impl.workspace(n_rows, self.width, hidden.device)
        self.blocks: list[tuple[int, torch.Tensor]] = []
        lse = torch.full((n_rows,), float("-inf"), dtype=torch.float32, device=hidden.device)
        target = torch.zeros(n_rows, dtype=hidden.dtype, device=hidden.device)
        for start in range(0, vocab, self.width):
            z = self._logits(start)
            local = labels - start
            lse = torch.logaddexp(lse, torch_impl.block_lse(z, local, valid, transform, self.scratch, self.elements))
            inside = (local >= 0) & (local < z.shape[1])
            picked = z.gather(1, local.clamp(0, z.shape[1] - 1).unsqueeze(1)).squeeze(1)
            target = torch.where(inside, picked, target)
            self.blocks.append((start, z))
        self.lse = lse
        self.nll = torch.where(valid, lse - transform.apply(target), 0.0)

    def _logits(self, start: int) -> torch.Tensor:
        columns = slice(start, start + self.width)
        return linear_logits(self.hidden, self.weight[columns], None if self.bias is None else self.bias[columns])

    def take_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lse, nll)``, handing ``nll`` over: the op returns it, and a reference kept here would
        make a cycle (output → its autograd node → this object → output) that holds the kept
        logits until the cyclic garbage collector runs when no backward comes."""
        nll, self.nll = self.nll, None
        return self.lse, nll

    def gradients(self, coeff: torch.Tensor, want_hidden: bool, want_weight: bool, want_bias: bool,
                  grad_dtypes: tuple[torch.dtype, torch.dtype]):  # fmt: skip
        """``(dH, dW, db)`` of ``Σ c_i ℓ_i`` (``coeff`` fp32 over the kept rows; ``None`` for a
        gradient not wanted; ``db`` fp32). Frees each block once used: callable once."""
        coeff = torch.where(self.valid, coeff.to(torch.float32), 0.0).contiguous()
        hidden_dtype, weight_dtype = grad_dtypes
        grad_hidden = torch.zeros(self.hidden.shape, dtype=torch.float32, device=self.hidden.device) if want_hidden else None
        weight_slices, bias_slices = [], []
        while self.blocks:
            start, z = self.blocks.pop(0)
            torch_impl.block_grad_(z, self.labels - start, self.lse, coeff, self.transform, self.scratch,
                                   self.elements)  # fmt: skip
            w = self.weight[start : start + z.shape[1]]
            if grad_hidden is not None:
                if z.dtype == torch.float32:
                    grad_hidden.addmm_(z, w)
                else:
                    grad_hidden.add_(z @ w)
            if want_weight:
                weight_slices.append((z.t() @ self.hidden).to(weight_dtype))
            if want_bias:
                bias_slices.append(z.sum(dim=0, dtype=torch.float32))
            del z
        grad_weight = torch.cat(weight_slices) if want_weight else None
        del weight_slices
        grad_bias = torch.cat(bias_slices) if want_bias else None
        if grad_hidden is not None and grad_hidden.dtype != hidden_dtype:
            grad_hidden = grad_hidden.to(hidden_dtype)
        return grad_hidden, grad_weight, grad_bias
