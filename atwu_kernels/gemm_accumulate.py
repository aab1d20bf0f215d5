"""The GEMMs of the chunked paths: the logits ``H_c Wᵀ (+ b)`` (:func:`linear_logits`) and the two
gradient GEMMs ``dH_c = G_c W`` and ``dW = Σ_c G_cᵀ H_c``.

Precision and traffic of ``dW`` (``V × D``; 2.1 GB in fp32 at V=128256, D=4096):

* fp32 operands: ``dW`` is the first chunk's product, later chunks ``addmm_`` into it.
* bf16/fp16 operands on CUDA, one chunk: one GEMM writes ``dW`` directly in the parameter dtype
  (fp32 accumulation inside the GEMM, one rounding) — no fp32 buffer, no extra pass.
* bf16/fp16 operands on CUDA, several chunks: ``torch.addmm(acc, Gᵀ, H, out_dtype=torch.float32,
  out=acc)`` accumulates inside the GEMM epilogue into the fp32 buffer (per chunk: read + write
  ``4·V·D`` bytes, no ``V × D`` low-precision temporary); the buffer is cast to the parameter
  dtype once, at the end of the sweep. ``out_dtype`` matmuls exist on CUDA since torch 2.8; a
  one-time probe checks that this build accepts them and falls back to ``acc += Gᵀ H`` (a
  low-precision product added in fp32) otherwise. The chunk policy (:mod:`atwu_kernels.ops`)
  makes several chunks rare on CUDA.
* bf16 operands on CPU (no ``out_dtype`` kernels): the low-precision product added in fp32.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def fp32_output_gemm_supported(device_type: str, device_index: int | None) -> bool:
    """Does ``mm``/``addmm`` with ``out_dtype=torch.float32`` work for bf16 operands here?"""
    if device_type != "cuda":
        return False
    device = torch.device(device_type, device_index)
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device=device)
        acc = torch.full((16, 16), 0.5, dtype=torch.float32, device=device)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        product = torch.mm(a, a, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return product.dtype == torch.float32 and bool((acc == 16.5).all())


def linear_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Raw logits ``h Wᵀ (+ b)`` (one library GEMM), into ``out`` when given."""
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias, h, weight.t(), out=out)


def _fp32_gemm(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16) and fp32_output_gemm_supported(t.device.type, t.device.index)


def hidden_grad_into(out_rows: torch.Tensor, grad_z: torch.Tensor, weight: torch.Tensor) -> None:
    """``out_rows ← G_c W`` in ``out_rows``' dtype (fp32 output straight from the GEMM when it can)."""
    if out_rows.dtype == grad_z.dtype:
        torch.mm(grad_z, weight, out=out_rows)
    elif out_rows.dtype == torch.float32 and _fp32_gemm(grad_z):
        torch.mm(grad_z, weight, out_dtype=torch.float32, out=out_rows)
    else:
        out_rows.copy_(grad_z @ weight)


class WeightGradAccumulator:
    """``Σ_c G_cᵀ H_c`` over the chunks of one sweep, returned in ``out_dtype``."""

    def __init__(self, shape: torch.Size, device: torch.device, out_dtype: torch.dtype, n_chunks: int):
        self.shape, self.device, self.out_dtype, self.n_chunks = shape, device, out_dtype, n_chunks
        self.acc: torch.Tensor | None = None

    def add(self, grad_z: torch.Tensor, h: torch.Tensor) -> None:
        g_t = grad_z.t()
        if grad_z.dtype == torch.float32:
            self.acc = (g_t @ h).float() if self.acc is None else self.acc.addmm_(g_t, h)
        elif _fp32_gemm(grad_z):
            if self.acc is None and self.n_chunks == 1 and self.out_dtype == grad_z.dtype:
                self.acc = torch.mm(g_t, h)  # final: the parameter dtype, one rounding
            elif self.acc is None:
                self.acc = torch.mm(g_t, h, out_dtype=torch.float32)
            else:
                torch.addmm(self.acc, g_t, h, out_dtype=torch.float32, out=self.acc)
        elif self.acc is None:
            self.acc = (g_t @ h).float()
        else:
            self.acc.add_(g_t @ h)

    def result(self) -> torch.Tensor:
        if self.acc is None:  # no rows
            return torch.zeros(self.shape, dtype=self.out_dtype, device=self.device)
        out, self.acc = self.acc.to(self.out_dtype), None
        return out
