"""Pure-PyTorch row operations on one chunk of raw logits (the CPU path and the test oracle).

The chunk machinery in :mod:`atwu_kernels.chunked` materialises one ``[rows, V]`` buffer of raw
logits ``z`` at a time and hands it to a *row-ops backend*:

``chunk_stats(z, labels, valid, transform, ignore_index) -> (lse, nll)``
    ``lse_i = log Σ_v exp(t_iv)``, ``nll_i = lse_i − t_{i,y_i}`` (0 on ignored rows), fp32,
    ``t = transform(z)``. Does not modify ``z``.

``chunk_coeff_grad_(z, labels, valid, transform, ignore_index, lse, nll, coefficients, rows, write_grad) -> c``
    Forms the row coefficients ``c`` (0 on ignored rows, see :mod:`atwu_kernels.coefficients`)
    and, if ``write_grad``, overwrites ``z`` with ``∂L/∂z`` for ``L = Σ_i c_i ℓ_i``::

        ∂L/∂t_iv = c_i · (softmax(t_i)_v − [v = y_i])
        ∂L/∂z_iv = ∂L/∂t_iv · dt/dz(z_iv)

``chunk_stats_coeff_grad_`` does both (the Triton backend fuses them into one kernel).

Memory: besides the logits chunk itself, this backend holds at most ``ROW_BLOCK × COLUMN_SLICE``
fp32 temporaries (4 MiB): the statistics pass walks row blocks × column slices, and the
gradient of fp32 logits without a transform is formed in place. Every value is computed by the
same element-wise ops and per-row reductions as one ``[rows, COLUMN_SLICE]`` temporary would give.
"""

from __future__ import annotations

import torch

from .coefficients import evaluate
from .transform import LogitTransform

COLUMN_SLICE = 8192
ROW_BLOCK = 128


def _row_blocks(rows: int):
    """Row ranges of ``ROW_BLOCK`` rows; a last block of a single row is merged into its neighbour
    (a one-row reduction takes PyTorch's split-the-row path, whose summation order differs)."""
    start = 0
    while start < rows:
        stop = min(start + ROW_BLOCK, rows)
        if rows - stop == 1:
            stop = rows
        yield slice(start, stop)
        start = stop


def _gather_raw_target(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Raw logit at each row's label (label clamped; callers mask ignored rows)."""
    index = labels.clamp(0, z.shape[1] - 1).unsqueeze(1)
    return z.gather(1, index).squeeze(1)


def _block_lse(z: torch.Tensor, transform: LogitTransform) -> torch.Tensor:
    """Online log-sum-exp over column slices of one row block."""
    rows, vocab = z.shape
    running_max = torch.full((rows,), float("-inf"), dtype=torch.float32, device=z.device)
    running_sum = torch.zeros(rows, dtype=torch.float32, device=z.device)
    for start in range(0, vocab, COLUMN_SLICE):
        t = transform.apply(z[:, start : start + COLUMN_SLICE])
        new_max = torch.maximum(running_max, t.amax(dim=1))
        running_sum.mul_(torch.exp(running_max - new_max))
        running_sum.add_(t.sub_(new_max.unsqueeze(1)).exp_().sum(dim=1))
        running_max = new_max
    return running_max + running_sum.log()


def _slice_grad_in_place(raw, labels, lse, coeff, start):
    """``raw ← c·(exp(raw − lse) − onehot)`` for fp32 logits under the identity transform."""
    rows, width = raw.shape
    raw.sub_(lse.unsqueeze(1)).exp_().mul_(coeff.unsqueeze(1))
    in_slice = (labels >= start) & (labels < start + width)
    local = (labels - start).clamp(0, width - 1)
    raw.index_put_((torch.arange(rows, device=raw.device), local), torch.where(in_slice, -coeff, 0.0), accumulate=True)


def _slice_grad_copy(raw, labels, lse, coeff, start, transform: LogitTransform):
    """Same as :func:`_slice_grad_in_place` through an fp32 temporary, with ``dt/dz``."""
    rows, width = raw.shape
    grad_t = transform.apply(raw).sub_(lse.unsqueeze(1)).exp_().mul_(coeff.unsqueeze(1))  # c·softmax
    # c·(softmax − onehot): subtract c at the label column when it falls in this slice, in fp32
    in_slice = (labels >= start) & (labels < start + width)
    local = (labels - start).clamp(0, width - 1)
    grad_t.index_put_(
        (torch.arange(rows, device=raw.device), local), torch.where(in_slice, -coeff, 0.0), accumulate=True
    )
    derivative = transform.derivative(raw)
    if isinstance(derivative, torch.Tensor) or derivative != 1.0:
        grad_t.mul_(derivative)
    raw.copy_(grad_t)


class TorchRowOps:
    """Row-wise softmax statistics and in-place logits gradient, in fp32, with torch ops."""

    name = "torch"

    @staticmethod
    def lse_and_target(
        z: torch.Tensor, labels: torch.Tensor, transform: LogitTransform
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lse = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
        for block in _row_blocks(z.shape[0]):
            lse[block] = _block_lse(z[block], transform)
        target = transform.apply(_gather_raw_target(z, labels))
        return lse, target

    @staticmethod
    def logits_grad_(
        z: torch.Tensor,
        labels: torch.Tensor,
        lse: torch.Tensor,
        coeff: torch.Tensor,
        transform: LogitTransform,
    ) -> torch.Tensor:
        in_place = transform.is_identity and z.dtype == torch.float32
        for block in _row_blocks(z.shape[0]) if not in_place else (slice(None),):
            zb, yb, lb, cb = z[block], labels[block], lse[block], coeff[block]
            for start in range(0, z.shape[1], COLUMN_SLICE):
                raw = zb[:, start : start + COLUMN_SLICE]
                if in_place:
                    _slice_grad_in_place(raw, yb, lb, cb, start)
                else:
                    _slice_grad_copy(raw, yb, lb, cb, start, transform)
        return z

    @classmethod
    def chunk_stats(cls, z, labels, valid, transform, ignore_index):
        lse, target = cls.lse_and_target(z, labels, transform)
        return lse, torch.where(valid, lse - target, 0.0)

    @classmethod
    def chunk_coeff_grad_(cls, z, labels, valid, transform, ignore_index, lse, nll, coefficients, rows, write_grad):
        c = evaluate(coefficients, nll, rows)
        c = torch.where(valid, c.to(torch.float32), 0.0).contiguous()
        if write_grad:
            cls.logits_grad_(z, labels, lse, c, transform)
        return c

    @classmethod
    def chunk_stats_coeff_grad_(cls, z, labels, valid, transform, ignore_index, coefficients, rows, write_grad):
        lse, nll = cls.chunk_stats(z, labels, valid, transform, ignore_index)
        c = cls.chunk_coeff_grad_(z, labels, valid, transform, ignore_index, lse, nll, coefficients, rows, write_grad)
        return lse, nll, c
