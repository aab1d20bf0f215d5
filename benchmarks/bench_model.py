"""Memory model of the default paths: the peak a fused loss may reach, from its buffers.

Forward + backward of one op over ``N`` rows (``s``: operand bytes, ``C``: rows per chunk from
:func:`atwu_kernels.auto_chunk_size`, ``k = ⌈N/C⌉`` chunks):

* logits chunk ``C·V·s`` (cuBLAS path; the fused path stores ``E`` of the same size plus fp32 row
  maxima ``C·⌈V/P⌉·4``);
* ``dH``: ``N·D·s``;
* ``dW``: ``V·D·s`` with one chunk; with several, an fp32 accumulator ``4·V·D`` that, once the
  last chunk is done, is cast to ``V·D·s`` (both alive for the cast, after the logits are freed).

Peak = ``max(chunk + dH + acc, acc + dW + dH)`` plus allocator slack: the CUDA caching allocator
rounds large blocks up to 2 MiB, and cuBLAS keeps a workspace (≤ 32 MiB per handle by default), so
64 MiB + 2% are allowed on CUDA; on CPU the MKL/oneDNN packing buffers (≈ 13 MiB measured at
D=512) and heap slack get 32 MiB + 2%.
"""

from __future__ import annotations

import torch


def expected_peak_bytes(op: str, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device,
                        impl: str | None = None) -> int:  # fmt: skip
    from atwu_kernels import auto_chunk_size

    n, d, v = shape
    s = dtype.itemsize
    chunk_rows = min(n, auto_chunk_size(n, v, d, s, device))
    chunks = -(-n // chunk_rows)
    logits = chunk_rows * v * s
    if impl == "triton_fused":
        logits += chunk_rows * (-(-v // 128)) * 4  # fp32 row maxima per 128-wide tile
    grad_hidden = n * d * s
    grad_weight = v * d * s
    accumulator = grad_weight if chunks == 1 else 4 * v * d
    peak = max(logits + grad_hidden + accumulator, accumulator + grad_weight + grad_hidden if chunks > 1 else 0)
    slack = (64 if device.type == "cuda" else 32) * 2**20
    return int(peak * 1.02 + slack)
