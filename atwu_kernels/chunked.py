"""Token-chunk sweep over ``H`` with library GEMMs: one ``chunk × V`` logits buffer at a time.

For a chunk of rows ``H_c`` the raw logits are ``Z_c = H_c Wᵀ (+ b)`` (a library GEMM: cuBLAS on
CUDA, MKL/oneDNN on CPU) and, for a per-row loss ``L = Σ_i c_i ℓ_i`` (the ``c_i`` constants, see
:mod:`atwu_kernels.coefficients`), the row-ops backend turns ``Z_c`` in place into
``G_c = ∂L/∂Z_c``; then::

    ∂L/∂H_c = G_c W          (rows of this chunk only: written once)
    ∂L/∂W  += G_cᵀ H_c       (fp32 accumulation, see gemm_accumulate)
    ∂L/∂b  += Σ_rows G_c     (fp32)

Cost per sweep, ``N`` rows, ``s`` = bytes per logit (2 for bf16):

* statistics only: ``2·N·D·V`` FLOPs; logits traffic ``2·N·V·s`` (GEMM write, one row read);
* with gradients: ``6·N·D·V`` FLOPs; logits traffic ``6·N·V·s`` (GEMM write; row kernel reads
  twice — statistics, then softmax — and writes ``G`` once; the ``dH`` and ``dW`` GEMMs read ``G``).
  The row work is one Triton kernel per chunk on CUDA (:mod:`atwu_kernels.triton_impl`).

Two autograd functions run this sweep (or the fused-GEMM sweep of
:mod:`atwu_kernels.triton_fused`, which has the same signature):

* :class:`LinearTokenNLL` — per-token NLL with arbitrary upstream gradient ``g``. Forward keeps
  only ``lse`` (O(N)); backward recomputes each chunk's logits with ``c_i = g_i`` (8·N·D·V FLOPs)
  — or, when the plan keeps the logits (:mod:`atwu_kernels.kept`), backward uses the forward's
  (6·N·D·V FLOPs, ``N'·V`` logits held in between).
* :class:`FusedLinearLoss` — a scalar ``L = Σ c_i ℓ_i`` whose ``c_i`` may depend on the detached
  ``ℓ_i``. Gradients are formed during forward (6·N·D·V FLOPs) in the parameters' dtypes; the
  backward scales them in place by the scalar upstream gradient and hands them out.

Both cast their inputs to the compute dtype inside (so autocast yields low-precision GEMMs but
gradients in each input's own dtype) and run with autocast disabled (see :mod:`atwu_kernels.inputs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .coefficients import AtwuCoefficients
from .gemm_accumulate import WeightGradAccumulator, hidden_grad_into, linear_logits
from .inputs import no_autocast
from .kept import KeptLogits, keeps_logits
from .transform import LogitTransform


@dataclass
class SweepResult:
    lse: torch.Tensor | None
    nll: torch.Tensor | None
    coeff: torch.Tensor | None
    grad_hidden: torch.Tensor | None  # in grad_dtypes[0]
    grad_weight: torch.Tensor | None  # in grad_dtypes[1]
    grad_bias: torch.Tensor | None  # fp32


@dataclass(frozen=True)
class Plan:
    """How one call runs: the backend's sweep and its fixed settings."""

    backend: object  # has .sweep(hidden, weight, bias, labels, *, plan, ...) -> SweepResult
    transform: LogitTransform
    chunk_size: int
    ignore_index: int
    compute_dtype: torch.dtype
    keep_logits: bool | None = None  # LinearTokenNLL: keep the logits for backward (None: auto, see kept)

    def sweep(self, hidden, weight, bias, labels, *, lse=None, coefficients=None, **kwargs) -> SweepResult:
        """The backend's sweep; on CPU over the counted rows only (:func:`counted_rows`)."""
        rows = counted_rows(labels, self.ignore_index, coefficients)
        if rows is None:
            return self.backend.sweep(hidden, weight, bias, labels, plan=self, lse=lse, coefficients=coefficients,
                                      **kwargs)
        result = self.backend.sweep(hidden[rows], weight, bias, labels[rows], plan=self,
                                    lse=None if lse is None else lse[rows],
                                    coefficients=select_rows(coefficients, rows), **kwargs)
        return expand_rows(result, rows, hidden.shape)


def counted_rows(labels: torch.Tensor, ignore_index: int, coefficients) -> torch.Tensor | None:
    """Indices of the rows that count (label ≠ ignore_index) when some do not, on CPU: the sweep then
    runs its GEMMs over those rows only (an ignored row contributes nothing: its NLL, coefficient and
    gradient are 0), as Cut Cross-Entropy does. ``None``: sweep every row (nothing ignored, all
    ignored, or on CUDA, where finding them would cost a host sync)."""
    if labels.device.type != "cpu" or not (coefficients is None or isinstance(coefficients, (torch.Tensor,
                                                                                            AtwuCoefficients))):
        return None
    counted = (labels != ignore_index).nonzero().squeeze(1)
    return counted if 0 < counted.numel() < labels.numel() else None


def select_rows(coefficients, rows: torch.Tensor):
    if coefficients is None or isinstance(coefficients, torch.Tensor):
        return None if coefficients is None else coefficients[rows]
    return coefficients.select(rows)


def expand_rows(result: SweepResult, rows: torch.Tensor, hidden_shape) -> SweepResult:
    """A sweep over ``rows`` as one over every row: 0 in the ignored rows' ``lse``, ``nll``, ``c`` and ``dH``."""

    def full(t: torch.Tensor | None, shape) -> torch.Tensor | None:
        if t is None:
            return None
        return torch.zeros(shape, dtype=t.dtype, device=t.device).index_copy_(0, rows, t)

    n = hidden_shape[0]
    return SweepResult(full(result.lse, n), full(result.nll, n), full(result.coeff, n),
                       full(result.grad_hidden, hidden_shape), result.grad_weight, result.grad_bias)


def sweep(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ops,
    plan: Plan,
    lse: torch.Tensor | None = None,
    coefficients=None,
    want_grad_hidden: bool = False,
    want_grad_weight: bool = False,
    want_grad_bias: bool = False,
    grad_dtypes: tuple[torch.dtype, torch.dtype] | None = None,
) -> SweepResult:
    """One pass over ``hidden [N, D]`` in row chunks, with row ops ``ops``.

    * ``lse is None``: compute ``lse`` and ``nll`` (0 on ignored rows).
    * ``coefficients`` given (tensor ``[N]`` or a rule, :mod:`atwu_kernels.coefficients`): also
      form the per-row coefficients (0 on ignored rows) and the requested gradients of ``Σ c_i ℓ_i``
      (``grad_dtypes``: output dtypes of ``dH`` and ``dW``, default the operands' dtype).
    """
    n_rows = hidden.shape[0]
    device = hidden.device
    chunk_size = plan.chunk_size
    compute_stats = lse is None
    want_any_grad = coefficients is not None and (want_grad_hidden or want_grad_weight or want_grad_bias)
    hidden_dtype, weight_dtype = grad_dtypes or (hidden.dtype, weight.dtype)
    if compute_stats:
        lse = torch.empty(n_rows, dtype=torch.float32, device=device)
        nll = torch.empty(n_rows, dtype=torch.float32, device=device)
    else:
        nll = None
    coeff_all = torch.empty(n_rows, dtype=torch.float32, device=device) if coefficients is not None else None
    grad_hidden = (
        torch.empty(hidden.shape, dtype=hidden_dtype, device=device) if want_any_grad and want_grad_hidden else None
    )
    grad_weight = (
        WeightGradAccumulator(weight.shape, device, weight_dtype, math.ceil(n_rows / chunk_size))
        if want_any_grad and want_grad_weight
        else None
    )
    grad_bias = (
        torch.zeros(weight.shape[0], dtype=torch.float32, device=device) if want_any_grad and want_grad_bias else None
    )
    workspace = ops.workspace(min(chunk_size, n_rows), weight.shape[0], device)
    # one logits buffer for every chunk: the pages of a freshly allocated chunk-sized buffer would be
    # faulted in again per chunk (on CPU about a fifth of the logits GEMM at V=32000)
    logits = torch.empty(min(chunk_size, n_rows), weight.shape[0], dtype=hidden.dtype, device=device)

    for start in range(0, n_rows, chunk_size):
        rows = slice(start, min(start + chunk_size, n_rows))
        h = hidden[rows]
        y = labels[rows]
        valid = y != plan.ignore_index
        z = linear_logits(h, weight, bias, out=logits[: h.shape[0]])
        if compute_stats and coefficients is not None:
            lse[rows], nll[rows], coeff_all[rows] = ops.chunk_stats_coeff_grad_(
                z, y, valid, plan.transform, plan.ignore_index, coefficients, rows, want_any_grad, workspace
            )
        elif compute_stats:
            lse[rows], nll[rows] = ops.chunk_stats(z, y, valid, plan.transform, plan.ignore_index, workspace)
        elif coefficients is not None:
            coeff_all[rows] = ops.chunk_coeff_grad_(
                z, y, valid, plan.transform, plan.ignore_index, lse[rows], None, coefficients, rows, want_any_grad,
                workspace,
            )  # fmt: skip
        if want_any_grad:  # z now holds G
            if grad_hidden is not None:
                hidden_grad_into(grad_hidden[rows], z, weight)
            if grad_weight is not None:
                grad_weight.add(z, h)
            if grad_bias is not None:
                grad_bias.add_(z.sum(dim=0, dtype=torch.float32))
        del z
    del logits, workspace  # before dW is finalised (a cast may allocate another V × D)

    return SweepResult(
        lse, nll, coeff_all, grad_hidden, None if grad_weight is None else grad_weight.result(), grad_bias
    )


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _dtype(t: torch.Tensor | None) -> torch.dtype | None:
    return None if t is None else t.dtype


def forward_stats(hidden, weight, bias, labels, plan: Plan, coefficients=None) -> SweepResult:
    """The sweep without any gradient (grad mode off or nothing requires grad)."""
    with no_autocast(hidden.device):
        dtype = plan.compute_dtype
        return plan.sweep(
            _cast(hidden, dtype), _cast(weight, dtype), _cast(bias, dtype), labels, coefficients=coefficients
        )


class _KeptRows:
    """:class:`KeptLogits` of the counted rows (:func:`counted_rows`), seen as all ``N`` rows."""

    def __init__(self, kept: KeptLogits, rows: torch.Tensor | None, hidden_shape):
        self.kept, self.rows, self.hidden_shape = kept, rows, hidden_shape

    def _full(self, result: SweepResult) -> SweepResult:
        return result if self.rows is None else expand_rows(result, self.rows, self.hidden_shape)

    def stats(self) -> SweepResult:
        """``lse`` and ``nll`` over all rows (``nll`` handed over: call once)."""
        return self._full(SweepResult(*self.kept.take_stats(), None, None, None, None))

    def gradients(self, coeff: torch.Tensor, needs, grad_dtypes) -> SweepResult:
        coeff = coeff if self.rows is None else coeff[self.rows]
        grads = self.kept.gradients(coeff, *needs, grad_dtypes)
        return self._full(SweepResult(None, None, None, *grads))


def keep_forward(hidden, weight, bias, labels, plan: Plan) -> _KeptRows | None:
    """The forward of a call that keeps its logits (:mod:`atwu_kernels.kept`), or ``None`` when the
    plan does not keep them for this problem."""
    if plan.keep_logits is False:  # before counting rows: the sweep counts them again
        return None
    rows = counted_rows(labels, plan.ignore_index, None)
    n_kept = labels.shape[0] if rows is None else rows.shape[0]
    if not keeps_logits(plan.keep_logits, plan.backend.name, hidden.device, plan.compute_dtype, n_kept,
                        *weight.shape):  # fmt: skip
        return None
    with no_autocast(hidden.device):
        dtype = plan.compute_dtype
        h, w, b = _cast(hidden, dtype), _cast(weight, dtype), _cast(bias, dtype)
        y = labels
        if rows is not None:
            h, y = h[rows], labels[rows]
        kept = KeptLogits(h, w, b, y, y != plan.ignore_index, plan.transform)
    return _KeptRows(kept, rows, hidden.shape)


class LinearTokenNLL(torch.autograd.Function):
    """``nll_i = lse(t(H_i Wᵀ + b)) − t(H_i Wᵀ + b)_{y_i}``; stores ``lse`` for backward and, when the
    plan keeps them, the logits (used by the first backward; a second one recomputes)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, plan):
        ctx.kept = keep_forward(hidden, weight, bias, labels, plan)
        result = forward_stats(hidden, weight, bias, labels, plan) if ctx.kept is None else ctx.kept.stats()
        ctx.save_for_backward(hidden, weight, bias, labels, result.lse)
        ctx.plan = plan
        return result.nll

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        plan: Plan = ctx.plan
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.kept is not None:
            kept, ctx.kept = ctx.kept, None  # its blocks are freed as they are used
            with no_autocast(hidden.device):
                result = kept.gradients(grad_nll.to(torch.float32), (need_h, need_w, need_b and bias is not None),
                                        (hidden.dtype, weight.dtype))  # fmt: skip
            return result.grad_hidden, result.grad_weight, _cast(result.grad_bias, _dtype(bias)), None, None
        with no_autocast(hidden.device):
            dtype = plan.compute_dtype
            result = plan.sweep(
                _cast(hidden, dtype),
                _cast(weight, dtype),
                _cast(bias, dtype),
                labels,
                lse=lse,
                coefficients=grad_nll.to(torch.float32),
                want_grad_hidden=need_h,
                want_grad_weight=need_w,
                want_grad_bias=need_b and bias is not None,
                grad_dtypes=(hidden.dtype, weight.dtype),
            )
        return result.grad_hidden, result.grad_weight, _cast(result.grad_bias, _dtype(bias)), None, None


class FusedLinearLoss(torch.autograd.Function):
    """``L = Σ_i c_i ℓ_i`` with detached coefficients; gradients computed during forward.

    Returns ``(loss, nll, coeff)``; only ``loss`` is differentiable. The gradients are handed to
    autograd once (scaled in place), so ``backward(retain_graph=True)`` twice is refused.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, plan, needs, coefficients):
        need_h, need_w, need_b = needs
        with no_autocast(hidden.device):
            dtype = plan.compute_dtype
            result = plan.sweep(
                _cast(hidden, dtype),
                _cast(weight, dtype),
                _cast(bias, dtype),
                labels,
                coefficients=coefficients,
                want_grad_hidden=need_h,
                want_grad_weight=need_w,
                want_grad_bias=need_b and bias is not None,
                grad_dtypes=(hidden.dtype, weight.dtype),
            )
            loss = torch.dot(result.coeff, result.nll)
        ctx.grads = [result.grad_hidden, result.grad_weight, _cast(result.grad_bias, _dtype(bias))]
        ctx.mark_non_differentiable(result.nll, result.coeff)
        return loss, result.nll, result.coeff

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll, _grad_coeff):
        if ctx.grads is None:
            raise RuntimeError(
                "atwu_kernels: this loss formed its gradients in forward and handed them out in the first "
                "backward; compute the loss again instead of calling backward twice (retain_graph=True)"
            )
        grads, ctx.grads = ctx.grads, None
        scale = grad_loss.to(torch.float32)
        grads = [None if g is None else g.mul_(scale) for g in grads]
        return (*grads, None, None, None, None)
