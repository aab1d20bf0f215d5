"""atwu_kernels — memory-bounded fused LM-head losses (depends on torch and triton only).

Public API:

* :func:`linear_token_nll` — per-token NLL of ``hidden @ weightᵀ`` with any upstream gradient.
* :func:`weighted_linear_cross_entropy` — cross-entropy with arbitrary per-token weights.
* :func:`atwu_head` — the fused ATWU head (model loss + NLL + scores + scorer gradient).

Dispatch: Triton row kernels for CUDA tensors, PyTorch elsewhere; ``impl="torch"|"triton"``
overrides (``"triton"`` on CPU needs ``TRITON_INTERPRET=1`` before import).
"""

from .ops import (
    DEFAULT_CHUNK_SIZE,
    AtwuHeadOutput,
    atwu_head,
    atwu_token_coefficients,
    linear_token_nll,
    scorer_scores,
    weighted_linear_cross_entropy,
)
from .transform import LogitTransform

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AtwuHeadOutput",
    "LogitTransform",
    "atwu_head",
    "atwu_token_coefficients",
    "linear_token_nll",
    "scorer_scores",
    "weighted_linear_cross_entropy",
]
