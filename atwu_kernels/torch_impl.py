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

Memory and speed: besides the logits chunk itself, this backend holds one fp32 temporary of
:data:`SCRATCH_BYTES` (a row block × a column slice, allocated once per sweep by :func:`workspace`).
The statistics walk row blocks × column slices through it; the gradient of fp32 logits without a
transform is formed in place, three passes over the whole chunk. Ops are few and large on
purpose: each op is one OpenMP parallel region, and on a host shared with other work a region
waits until all its threads are scheduled, so there the op count rather than the bytes sets the
time. Every value is computed by the same element-wise ops and per-row reductions as one
``[rows, COLUMN_SLICE]`` temporary per column slice would give, so results do not depend on the
blocking (a one-row block is avoided: PyTorch reduces a single row in a different order).
"""

from __future__ import annotations

import torch

from .coefficients import evaluate
from .transform import LogitTransform

COLUMN_SLICE = 8192
SCRATCH_BYTES = 16 << 20  # the one fp32 temporary: 512 rows × 8192 columns


def _row_block(vocab: int) -> int:
    return max(2, SCRATCH_BYTES // (4 * min(vocab, COLUMN_SLICE)))


def _row_blocks(rows: int, block: int):
    """Row ranges of ``block`` rows; a last block of a single row is merged into its neighbour
    (a one-row reduction takes PyTorch's split-the-row path, whose summation order differs)."""
    start = 0
    while start < rows:
        stop = min(start + block, rows)
        if rows - stop == 1:
            stop = rows
        yield slice(start, stop)
        start = stop


def _gather_raw_target(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Raw logit at each row's label (label clamped; callers mask ignored rows)."""
    index = labels.clamp(0, z.shape[1] - 1).unsqueeze(1)
    return z.gather(1, index).squeeze(1)


def workspace(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """The one fp32 temporary of a sweep: a row block × a column slice. The sweep allocates it once
    for all its chunks: a temporary freed per chunk leaves room for small allocations to settle in
    its place, and the host heap then grows by a new one each chunk."""
    return torch.empty(min(rows, _row_block(vocab) + 1), min(vocab, COLUMN_SLICE), dtype=torch.float32, device=device)


def _block_lse(z: torch.Tensor, transform: LogitTransform, scratch: torch.Tensor) -> torch.Tensor:
    """Online log-sum-exp over column slices of one row block (``t − max`` goes into ``scratch``)."""
    rows, vocab = z.shape
    running_max = torch.full((rows,), float("-inf"), dtype=torch.float32, device=z.device)
    running_sum = torch.zeros(rows, dtype=torch.float32, device=z.device)
    direct = transform.is_identity and z.dtype == torch.float32
    for start in range(0, vocab, COLUMN_SLICE):
        raw = z[:, start : start + COLUMN_SLICE]
        t = scratch[:rows, : raw.shape[1]]
        if direct:  # t = z − max without a copy of z
            new_max = torch.maximum(running_max, raw.amax(dim=1))
            torch.sub(raw, new_max.unsqueeze(1), out=t)
        else:
            transform.apply_into(raw, t)
            new_max = torch.maximum(running_max, t.amax(dim=1))
            t.sub_(new_max.unsqueeze(1))
        running_sum.mul_(torch.exp(running_max - new_max))
        running_sum.add_(t.exp_().sum(dim=1))
        running_max = new_max
    return running_max + running_sum.log()


def _slice_grad_in_place(raw, labels, lse, coeff, start):
    """``raw ← c·(exp(raw − lse) − onehot)`` for fp32 logits under the identity transform."""
    rows, width = raw.shape
    raw.sub_(lse.unsqueeze(1)).exp_().mul_(coeff.unsqueeze(1))
    in_slice = (labels >= start) & (labels < start + width)
    local = (labels - start).clamp(0, width - 1)
    raw.index_put_((torch.arange(rows, device=raw.device), local), torch.where(in_slice, -coeff, 0.0), accumulate=True)


def _slice_grad_copy(raw, labels, lse, coeff, start, transform: LogitTransform, scratch):
    """Same as :func:`_slice_grad_in_place` through an fp32 temporary, with ``dt/dz``."""
    rows, width = raw.shape
    grad_t = transform.apply_into(raw, scratch[:rows, :width])
    grad_t.sub_(lse.unsqueeze(1)).exp_().mul_(coeff.unsqueeze(1))  # c·softmax
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


def _grad_(z, labels, lse, coeff, transform: LogitTransform, scratch) -> None:
    """Overwrite the chunk's logits with their gradient: fp32 without a transform in place, three
    passes over the whole chunk; otherwise row block × column slice through ``scratch``."""
    if transform.is_identity and z.dtype == torch.float32:
        _slice_grad_in_place(z, labels, lse, coeff, 0)
        return
    rows, width = scratch.shape
    for block in _row_blocks(z.shape[0], rows - 1 if rows > 2 else rows):
        for start in range(0, z.shape[1], width):
            raw = z[block, start : start + width]
            _slice_grad_copy(raw, labels[block], lse[block], coeff[block], start, transform, scratch)


class TorchRowOps:
    """Row-wise softmax statistics and in-place logits gradient, in fp32, with torch ops.

    Few, large ops: every op over a block is one OpenMP parallel region, and on a host shared with
    other work each region waits for all its threads to be scheduled, so there the op count rather
    than the bytes sets the time. Statistics go row block by row block through the scratch; the
    coefficients and the (in-place) gradient take the whole chunk at once.
    """

    name = "torch"

    @staticmethod
    def run_blocks(
        z, labels, valid, transform, *, lse=None, coefficients=None, rows=None, write_grad=False, scratch=None
    ):
        """``(lse, nll, c)`` of one chunk (``nll`` None when ``lse`` is given; ``c`` None without
        coefficients), writing the gradient over ``z`` when asked."""
        if scratch is None:
            scratch = workspace(z.shape[0], z.shape[1], z.device)
        nll = None
        if lse is None:
            lse = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
            for block in _row_blocks(z.shape[0], _row_block(z.shape[1])):
                lse[block] = _block_lse(z[block], transform, scratch)
            target = transform.apply(_gather_raw_target(z, labels))
            nll = torch.where(valid, lse - target, 0.0)
        if coefficients is None:
            return lse, nll, None
        c = evaluate(coefficients, nll, rows if rows is not None else slice(0, z.shape[0]))
        c = torch.where(valid, c.to(torch.float32), 0.0).contiguous()
        if write_grad:
            _grad_(z, labels, lse, c, transform, scratch)
        return lse, nll, c

    workspace = staticmethod(workspace)

    @classmethod
    def chunk_stats(cls, z, labels, valid, transform, ignore_index, workspace=None):
        lse, nll, _ = cls.run_blocks(z, labels, valid, transform, scratch=workspace)
        return lse, nll

    @classmethod
    def chunk_coeff_grad_(
        cls, z, labels, valid, transform, ignore_index, lse, nll, coefficients, rows, write_grad, workspace=None
    ):
        return cls.run_blocks(
            z, labels, valid, transform, lse=lse, coefficients=coefficients, rows=rows, write_grad=write_grad,
            scratch=workspace,
        )[2]  # fmt: skip

    @classmethod
    def chunk_stats_coeff_grad_(
        cls, z, labels, valid, transform, ignore_index, coefficients, rows, write_grad, workspace=None
    ):
        return cls.run_blocks(
            z, labels, valid, transform, coefficients=coefficients, rows=rows, write_grad=write_grad, scratch=workspace
        )
