"""The scorer's two mat-vecs in PyTorch: ``g = σ(H_s w + b)`` and ``Σ_i r_i h_i`` (fp32, detached).

The Triton backends run the same two products as kernels that read ``H_s`` in its own dtype
(:mod:`atwu_kernels.triton_scorer`) instead of an fp32 copy of it.
"""

from __future__ import annotations

import torch

from .inputs import no_autocast


def scorer_scores(score_hidden2d: torch.Tensor, scorer_weight: torch.Tensor, scorer_bias: torch.Tensor) -> torch.Tensor:
    """``g = σ(h·w + b)`` in fp32, detached."""
    with torch.no_grad(), no_autocast(score_hidden2d.device):
        logits = score_hidden2d.float() @ scorer_weight.detach().float().reshape(-1)
        return torch.sigmoid(logits + scorer_bias.detach().float().reshape(()))


def scorer_row_sum(per_row: torch.Tensor, score_hidden2d: torch.Tensor) -> torch.Tensor:
    """``Σ_i r_i h_i`` in fp32 (``[D]``)."""
    with torch.no_grad(), no_autocast(score_hidden2d.device):
        return per_row @ score_hidden2d.float()
