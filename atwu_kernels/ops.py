"""Public ops: per-token NLL and weighted linear cross-entropy (the ATWU head is in :mod:`.head`).

Both run on a backend's sweep (:mod:`atwu_kernels.dispatch`) and never hold more than one
``chunk × V`` logits buffer (the fused-GEMM backend: one per chunk too, see its docstring).
Hidden states may be ``[N, D]`` or ``[..., D]`` with ``labels.shape == hidden.shape[:-1]``;
per-token outputs have ``labels.shape``.

Logits are ``t = softcap·tanh(logit_scale·(h·Wᵀ + bias)/softcap)`` (each stage optional).

``chunk_size`` (rows per logits buffer) defaults to :func:`auto_chunk_size`.
"""

from __future__ import annotations

import torch

from .chunked import FusedLinearLoss, LinearTokenNLL, Plan, forward_stats
from .dispatch import backend_for
from .inputs import Prepared, prepare
from .selfcheck import choose
from .transform import LogitTransform

DEFAULT_CHUNK_SIZE = 1024  # rows per logits buffer off CUDA
CUDA_LOGITS_BUDGET = 1 << 30  # bytes of logits per chunk on CUDA


def auto_chunk_size(n_rows: int, vocab: int, dim: int, itemsize: int, device: torch.device) -> int:
    """Rows per logits buffer when the caller gives none.

    Off CUDA: :data:`DEFAULT_CHUNK_SIZE`. On CUDA, several chunks cost an fp32 ``dW`` buffer
    (``4·V·D`` bytes) and its read-modify-write per chunk, so all rows go in one chunk when its
    logits (``N·V·s`` bytes) fit in :data:`CUDA_LOGITS_BUDGET` plus that buffer; otherwise chunks of
    the budget (a multiple of 128 rows). At V=128256, D=4096, bf16: N=4096 → one chunk of
    1.05 GB; N=16384 → four chunks of 4096 rows and a 2.1 GB fp32 ``dW``.
    """
    if device.type != "cuda":
        return DEFAULT_CHUNK_SIZE
    row_bytes = max(1, vocab * itemsize)
    if n_rows * row_bytes <= CUDA_LOGITS_BUDGET + 4 * vocab * dim:
        return max(1, n_rows)
    return max(128, CUDA_LOGITS_BUDGET // row_bytes // 128 * 128)


def make_plan(p: Prepared, impl, softcap, logit_scale, chunk_size, ignore_index, keep_logits=None) -> Plan:
    if chunk_size is None:
        chunk_size = auto_chunk_size(
            p.hidden.shape[0], p.weight.shape[0], p.weight.shape[1], p.compute_dtype.itemsize, p.hidden.device
        )
    elif int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    backend = backend_for(p.hidden.device, impl)
    if keep_logits and backend.name != "torch":
        raise ValueError(f"keep_logits=True needs impl='torch' (the {backend.name!r} backend recomputes the logits)")
    return Plan(
        backend=backend,
        transform=LogitTransform.build(logit_scale, softcap),
        chunk_size=int(chunk_size),
        ignore_index=ignore_index,
        compute_dtype=p.compute_dtype,
        keep_logits=None if keep_logits is None else bool(keep_logits),
    )


def fused_loss(p: Prepared, plan: Plan, coefficients):
    """``(loss, nll, coeff)`` of ``L = Σ c_i ℓ_i``; gradients only when some input needs one."""
    if not p.any_grad:
        result = forward_stats(p.hidden, p.weight, p.bias, p.labels, plan, coefficients)
        return torch.dot(result.coeff, result.nll), result.nll, result.coeff
    return FusedLinearLoss.apply(p.hidden, p.weight, p.bias, p.labels, plan, p.needs, coefficients)


def linear_token_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    logit_scale: float | None = None,
    chunk_size: int | None = None,
    impl: str | None = None,
    keep_logits: bool | None = None,
) -> torch.Tensor:
    """Per-token NLL ``ℓ_i = logsumexp(t_i) − t_{i,y_i}`` (fp32; 0 on ignored rows), shape ``labels.shape``.

    Differentiable in ``hidden``, ``weight`` and ``bias`` for any upstream gradient ``g``, which
    back-propagates ``g_i·(softmax(t_i) − onehot(y_i))``. Either backward recomputes each chunk's
    logits (8·N·D·V FLOPs in all, one chunk of logits at a time), or the forward keeps the
    counted rows' logits for it (``keep_logits``; 6·N·D·V FLOPs, ``N'·V`` logits held between
    forward and backward, :mod:`atwu_kernels.kept`). ``keep_logits=None``: kept on CPU with the
    torch backend in fp32 when they fit 1 GiB and ``N' ≥ 2·D``, else recomputed; ``True`` uses the
    torch backend (``impl=None``) and refuses another one.
    Labels must be in ``[0, V)`` or ``ignore_index``.
    """
    p = prepare(hidden, weight, labels, bias, ignore_index)
    if keep_logits and impl is None:
        impl = "torch"  # the backend that can keep them
    impl = choose("token_nll", impl, hidden, weight, bias, softcap=softcap, logit_scale=logit_scale)
    plan = make_plan(p, impl, softcap, logit_scale, chunk_size, ignore_index, keep_logits)
    if p.any_grad:
        nll = LinearTokenNLL.apply(p.hidden, p.weight, p.bias, p.labels, plan)
    else:
        nll = forward_stats(p.hidden, p.weight, p.bias, p.labels, plan).nll
    return nll.reshape(labels.shape)


def _as_weights(token_weights, prepared: Prepared) -> torch.Tensor:
    if token_weights is None:
        return prepared.valid.to(torch.float32)
    weights = torch.as_tensor(token_weights, device=prepared.labels.device).detach().to(torch.float32).reshape(-1)
    if weights.shape != prepared.labels.shape:
        raise ValueError(
            f"token_weights must have labels' shape ({prepared.labels.numel()} tokens), got {weights.numel()}"
        )
    return torch.where(prepared.valid, weights, 0.0)


def weighted_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    logit_scale: float | None = None,
    chunk_size: int | None = None,
    impl: str | None = None,
    keep_logits: bool | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weightᵀ`` with constant per-token weights ``w`` (detached).

    * ``"mean"``: ``Σ w_i ℓ_i / Σ_valid w_i`` (0 when the denominator is 0);
    * ``"sum"``:  ``Σ w_i ℓ_i``;
    * ``"none"``: ``w_i ℓ_i`` with ``labels.shape``.

    ``"mean"``/``"sum"`` use the gradient-in-forward path (``c_i = w_i / denominator``, 6·N·D·V FLOPs
    with gradients, 2·N·D·V without); ``"none"`` goes through :func:`linear_token_nll` so any upstream
    gradient works (``keep_logits`` applies to that path only).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    p = prepare(hidden, weight, labels, bias, ignore_index)
    weights = _as_weights(token_weights, p)
    if reduction == "none":
        nll = linear_token_nll(
            hidden,
            weight,
            labels,
            bias=bias,
            ignore_index=ignore_index,
            softcap=softcap,
            logit_scale=logit_scale,
            chunk_size=chunk_size,
            impl=impl,
            keep_logits=keep_logits,
        )
        return nll * weights.reshape(labels.shape)
    if reduction == "mean":
        denominator = weights.sum()
        coefficients = torch.where(denominator != 0, weights / torch.where(denominator != 0, denominator, 1.0), 0.0)
    else:
        coefficients = weights
    impl = choose("weighted_ce", impl, hidden, weight, bias, softcap=softcap, logit_scale=logit_scale)
    plan = make_plan(p, impl, softcap, logit_scale, chunk_size, ignore_index)
    loss, _, _ = fused_loss(p, plan, coefficients)
    return loss
