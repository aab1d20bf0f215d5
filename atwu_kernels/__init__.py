"""atwu_kernels — memory-bounded fused LM-head losses (depends on torch and triton only).

Public API:

* :func:`linear_token_nll` — per-token NLL of ``hidden @ weightᵀ`` with any upstream gradient.
* :func:`weighted_linear_cross_entropy` — cross-entropy with arbitrary per-token weights.
* :func:`atwu_head` — the fused ATWU head (model loss + NLL + scores + scorer gradient).
* :func:`linear_distillation` — cross-entropy against a teacher head's (adjusted) softmax (UNDIAL).

Backends (``impl=``, see :mod:`atwu_kernels.dispatch`): ``"torch"`` (CPU default), ``"triton"``
(cuBLAS GEMMs + a Triton row kernel; CUDA default), ``"triton_fused"`` (Triton GEMMs with the
softmax in their epilogue/prologue). The Triton ones run on CPU under ``TRITON_INTERPRET=1``.
A Triton backend picked by ``impl=None`` is checked against the torch path once per configuration
and replaced by it, with one warning line, if it fails; ``ATWU_KERNELS_IMPL`` forces a backend
unchecked (:mod:`atwu_kernels.selfcheck`).
"""

from .coefficients import atwu_token_coefficients
from .dispatch import IMPLEMENTATIONS
from .distill import linear_distillation
from .head import AtwuHeadOutput, atwu_head, scorer_scores
from .ops import DEFAULT_CHUNK_SIZE, auto_chunk_size, linear_token_nll, weighted_linear_cross_entropy
from .transform import LogitTransform

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "IMPLEMENTATIONS",
    "AtwuHeadOutput",
    "LogitTransform",
    "atwu_head",
    "atwu_token_coefficients",
    "auto_chunk_size",
    "linear_distillation",
    "linear_token_nll",
    "scorer_scores",
    "weighted_linear_cross_entropy",
]
