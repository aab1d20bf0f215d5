"""Pure-PyTorch row operations on one chunk of raw logits (the CPU path and the test oracle).

The chunk machinery in :mod:`atwu_kernels.chunked` materialises one ``[rows, V]`` buffer of raw
logits ``z`` at a time and hands it to a *row-ops backend* with two methods:

``lse_and_target(z, labels, transform) -> (lse, target)``
    ``lse_i = log Σ_v exp(t_iv)`` and ``target_i = t_{i, y_i}`` with ``t = transform(z)``, both fp32.
    Must not modify ``z``.

``logits_grad_(z, labels, lse, coeff, transform) -> z``
    Overwrites ``z`` with ``∂L/∂z`` for ``L = Σ_i c_i ℓ_i``, ``ℓ_i = lse_i − t_{i,y_i}``::

        ∂L/∂t_iv = c_i · (softmax(t_i)_v − [v = y_i])
        ∂L/∂z_iv = ∂L/∂t_iv · dt/dz(z_iv)

    Rows with ``c_i = 0`` (ignored rows) get an exact zero gradient.

This backend walks the vocabulary in column slices so that its temporaries stay at
``rows × COLUMN_SLICE`` floats: the only full-size buffer is the logits chunk itself.
"""

from __future__ import annotations

import torch

from .transform import LogitTransform

COLUMN_SLICE = 8192


def _gather_raw_target(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Raw logit at each row's label (label clamped; callers mask ignored rows)."""
    index = labels.clamp(0, z.shape[1] - 1).unsqueeze(1)
    return z.gather(1, index).squeeze(1)


class TorchRowOps:
    """Row-wise softmax statistics and in-place logits gradient, in fp32, with torch ops."""

    name = "torch"

    @staticmethod
    def lse_and_target(
        z: torch.Tensor, labels: torch.Tensor, transform: LogitTransform
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, vocab = z.shape
        running_max = torch.full((rows,), float("-inf"), dtype=torch.float32, device=z.device)
        running_sum = torch.zeros(rows, dtype=torch.float32, device=z.device)
        for start in range(0, vocab, COLUMN_SLICE):
            t = transform.apply(z[:, start : start + COLUMN_SLICE])
            new_max = torch.maximum(running_max, t.amax(dim=1))
            running_sum.mul_(torch.exp(running_max - new_max))
            running_sum.add_(t.sub_(new_max.unsqueeze(1)).exp_().sum(dim=1))
            running_max = new_max
        lse = running_max + running_sum.log()
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
        rows, vocab = z.shape
        row_index = torch.arange(rows, device=z.device)
        coeff_col = coeff.unsqueeze(1)
        for start in range(0, vocab, COLUMN_SLICE):
            raw = z[:, start : start + COLUMN_SLICE]
            width = raw.shape[1]
            grad_t = transform.apply(raw).sub_(lse.unsqueeze(1)).exp_().mul_(coeff_col)  # c·softmax
            # c·(softmax − onehot): subtract c at the label column when it falls in this slice,
            # in fp32 before any down-cast.
            in_slice = (labels >= start) & (labels < start + width)
            local = (labels - start).clamp(0, width - 1)
            grad_t.index_put_((row_index, local), torch.where(in_slice, -coeff, 0.0), accumulate=True)
            derivative = transform.derivative(raw)
            if isinstance(derivative, torch.Tensor) or derivative != 1.0:
                grad_t.mul_(derivative)
            raw.copy_(grad_t)
        return z
