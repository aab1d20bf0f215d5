"""Fused linear distillation: per-token cross-entropy of a student's LM head against a teacher's
adjusted softmax, chunked, never holding more than two ``chunk × V`` buffers.

For token i with student logits z_i = t(h_i·Wᵀ + b) and teacher logits u_i = t(h^T_i·W_Tᵀ + b_T)
(``t`` the model's logit transform, :class:`~atwu_kernels.transform.LogitTransform`), the target is
the teacher's distribution with the label's logit lowered by ``shift`` (UNDIAL, Dong et al. 2024):

    q_i = softmax(u_i − shift·e_{y_i}),     loss_i = −Σ_v q_iv log softmax(z_i)_v = lse(z_i) − Σ_v q_iv z_iv

The teacher is a constant. With an upstream gradient g_i per token, ∂/∂z_i = g_i·(softmax(z_i) − q_i),
so ∂/∂H = G·W and ∂/∂W = Gᵀ·H (G through the transform's derivative), accumulated in fp32 chunk by
chunk; the backward recomputes both logit chunks. Also returns the student's per-token NLL
lse(z_i) − z_{i,y_i} (no gradient), free from the same logits. Ignored rows (``ignore_index``) give 0.

Backends (``impl=``; ``None`` = ``"triton"`` on CUDA, ``"torch"`` elsewhere, as for the other ops):

* ``"torch"`` — library GEMMs and PyTorch element-wise ops on fp32 chunks (this module). The
  forward keeps nothing but its inputs.
* ``"triton"`` — the same library GEMMs (cuBLAS) and one Triton row kernel per chunk for the
  statistics and for the gradient, written over the student's logits chunk in place
  (:mod:`atwu_kernels.triton_distill`). The forward also keeps the two per-row log-sum-exps (2·N fp32).

Cost of one forward + backward (``N`` rows, ``D`` hidden size, ``V`` vocabulary, ``s`` bytes per
logit in the compute dtype; identity transform; an element-wise op counted as its reads and
writes, a log-sum-exp as two reads):

=========  ===================================  ==========================  ==========================
impl       FLOPs                                logits bytes, all           of them outside the GEMMs
=========  ===================================  ==========================  ==========================
torch      12·N·D·V (forward 4, backward 8)     ≈ (8·s + 148)·N·V           ≈ (4·s + 140)·N·V
triton     12·N·D·V (forward 4, backward 8)     11·N·V·s                    5·N·V·s
=========  ===================================  ==========================  ==========================

The FLOPs are the GEMMs: two logits GEMMs in the forward, the same two again plus ``dH`` and ``dW``
in the backward (each 2·N·D·V). The torch path's bytes are its fp32 copies of both chunks, two
in-place softmaxes, the products and scalings (forward ≈ (4·s + 56)·N·V, backward ≈ (4·s + 92)·N·V);
a soft cap adds three passes (24 bytes per logit) per transformed chunk and about seven for its
derivative; a bias gradient adds one read of ``G`` (4·N·V torch, N·V·s triton). The Triton kernel
reads each raw chunk once in the forward and once in the backward and writes ``G`` once. At N=4096, V=128256, bf16 that is 5.3 GB outside the GEMMs (≈ 1.3 ms at
4.2 TB/s) against ≈ 78 GB for the torch path's row work; the GEMMs (D=4096) are ≈ 37 ms at 700
TFLOP/s. Neither path has been timed on a GPU yet.
"""

from __future__ import annotations

import torch

from .dispatch import resolve_impl
from .gemm_accumulate import linear_logits
from .selfcheck import choose
from .transform import LogitTransform

DEFAULT_DISTILL_CHUNK = 512
DISTILL_IMPLEMENTATIONS = ("torch", "triton")


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension, in place."""
    return x.sub_(x.logsumexp(-1, keepdim=True)).exp_()


def _target(teacher_raw: torch.Tensor, labels: torch.Tensor, shift: float, transform: LogitTransform) -> torch.Tensor:
    """q = softmax(t(u) − shift·e_y) as a fresh fp32 chunk (written over the transformed logits)."""
    u = transform.apply(teacher_raw)
    if shift:
        u.scatter_add_(1, labels[:, None], torch.full((u.shape[0], 1), -float(shift), dtype=u.dtype, device=u.device))
    return _softmax_(u)


class _LinearDistillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, valid, shift,
                transform, chunk):
        n = hidden.shape[0]
        loss = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        nll = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        with torch.no_grad():
            for lo in range(0, n, chunk):
                rows = slice(lo, lo + chunk)
                y = labels[rows]
                z = transform.apply(linear_logits(hidden[rows], weight, bias))
                q = _target(linear_logits(teacher_hidden[rows], teacher_weight, teacher_bias), y, shift, transform)
                lse = z.logsumexp(-1)
                loss[rows] = lse - q.mul_(z).sum(-1)
                nll[rows] = lse - z.gather(1, y[:, None])[:, 0]
        loss.mul_(valid)
        nll.mul_(valid)
        ctx.save_for_backward(hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, valid)
        ctx.shift, ctx.transform, ctx.chunk = shift, transform, chunk
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, valid = ctx.saved_tensors
        transform, chunk = ctx.transform, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if (need_b and bias is not None) \
            else None
        coeff = (grad_loss.float() * valid)
        with torch.no_grad():
            for lo in range(0, hidden.shape[0], chunk):
                rows = slice(lo, lo + chunk)
                raw = linear_logits(hidden[rows], weight, bias)
                derivative = transform.derivative(raw)  # dt/dz: a tensor only with a soft cap
                g = _softmax_(transform.apply(raw))
                del raw
                g.sub_(_target(linear_logits(teacher_hidden[rows], teacher_weight, teacher_bias), labels[rows], ctx.shift,
                               transform))
                g.mul_(coeff[rows, None]).mul_(derivative)  # ∂/∂t, then ∂/∂z
                if need_h:
                    grad_h[rows] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(g.t(), hidden[rows].float())
                if grad_b is not None:
                    grad_b.add_(g.sum(0))
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None, None, None)


def linear_distillation(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: float = 0.0,
    bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    logit_scale: float | None = None,
    chunk_size: int = DEFAULT_DISTILL_CHUNK,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (loss, student NLL), each ``labels.shape``; the loss is differentiable in ``hidden``,
    ``weight`` and ``bias`` for any upstream gradient (see the module docstring).

    ``impl``: ``"torch"`` or ``"triton"``; ``None`` picks ``"triton"`` for CUDA tensors and
    ``"torch"`` elsewhere, as the other ops do (:func:`atwu_kernels.dispatch.resolve_impl`; off CUDA
    ``"triton"`` needs ``TRITON_INTERPRET=1``). A Triton backend chosen by ``impl=None`` is first checked
    against the torch path, once per configuration (:mod:`atwu_kernels.selfcheck`)."""
    options = (("teacher", teacher_weight.dtype), ("teacher_bias", teacher_bias is not None))
    impl = choose("distill", impl, hidden, weight, bias, softcap=softcap, logit_scale=logit_scale, options=options,
                  choices=DISTILL_IMPLEMENTATIONS)
    impl = resolve_impl(hidden.device, impl, DISTILL_IMPLEMENTATIONS)
    if hidden.shape != teacher_hidden.shape[:-1] + hidden.shape[-1:] or hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)}, teacher_hidden {tuple(teacher_hidden.shape)} and labels "
                         f"{tuple(labels.shape)} must have the same rows")
    if weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student and teacher vocabularies differ: {weight.shape[0]} vs {teacher_weight.shape[0]}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shape = labels.shape
    flat = labels.reshape(-1).long()
    valid = flat != ignore_index
    vocab = weight.shape[0]
    bad = valid & ((flat < 0) | (flat >= vocab))
    if bool(bad.any()):
        raise IndexError(f"label {int(flat[bad][0])} is out of range for a vocabulary of {vocab}")
    y = torch.where(valid, flat, torch.zeros_like(flat))
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    if impl == "torch":
        function = _LinearDistillation
    else:
        from .triton_distill import LinearDistillationTriton as function  # lazy: no Triton import on the torch path
    loss, nll = function.apply(
        hidden.reshape(-1, hidden.shape[-1]).to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
        teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach().to(teacher_weight.dtype), teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), y, valid.float(), float(shift),
        LogitTransform.build(logit_scale, softcap), int(chunk_size))
    return loss.reshape(shape), nll.reshape(shape)
