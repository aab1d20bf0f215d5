"""FLOPs, logits traffic and expected GPU time of each op on each path (what the docstrings state).

``N`` rows, ``D`` hidden size, ``V`` vocabulary, ``s`` bytes per operand, ``C`` rows per chunk,
``k = ⌈N/C⌉`` chunks. "Exposed" bytes are memory traffic outside a compute-bound GEMM (a row kernel,
an fp32 accumulator round trip, a scale pass); traffic a GEMM does while computing (its output
write, its operand reads) is hidden behind its FLOPs and counted only in ``logits_bytes``.

cuBLAS path (``impl="triton"``; per chunk: GEMM writes ``Z``, the row kernel reads it twice and
writes ``G``, the ``dH``/``dW`` GEMMs read ``G``):

=================  =========  ====================  ===================================================
op                 FLOPs      logits bytes          exposed bytes
=================  =========  ====================  ===================================================
weighted CE, head  6·N·D·V    6·N·V·s               3·N·V·s (row kernel) + dW rounds + 2·(V·D + N·D)·s
linear_token_nll   8·N·D·V    7·N·V·s               3·N·V·s (fwd read, bwd read + write) + dW rounds
=================  =========  ====================  ===================================================

``dW rounds`` = ``(k − 1)·8·V·D`` (fp32 read + write per extra chunk) + ``(4 + s)·V·D`` (the final
cast) when ``k > 1``, else 0. The head's backward scales ``dW``/``dH`` in place: ``2·(V·D + N·D)·s``.

Fused Triton path (``impl="triton_fused"``): same FLOPs; ``E`` is written once and read by the two
gradient GEMMs: ``3·N·V·s`` logits bytes, none exposed (the softmax is in the GEMMs' epilogue and
prologue) but the prologue's ALU work (see :mod:`atwu_kernels.triton_fused`).

Expected time = FLOPs / sustained GEMM rate + exposed bytes / sustained bandwidth; for an H200
(989 TFLOP/s dense bf16 and 4.8 TB/s peak) we take 700 TFLOP/s and 4.2 TB/s sustained. At
N=4096, D=4096, V=128256, bf16 (one chunk): weighted CE / head ≈ 18.5 + 0.75 + 0.5 = 19.8 ms,
linear_token_nll ≈ 24.6 + 0.75 = 25.4 ms; at N=16384 (four chunks) weighted CE ≈ 81 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

H200_SUSTAINED_FLOPS = 700e12
H200_SUSTAINED_BANDWIDTH = 4.2e12


@dataclass(frozen=True)
class Costs:
    flops: int
    logits_bytes: int
    exposed_bytes: int

    def expected_seconds(self, flops_rate: float = H200_SUSTAINED_FLOPS, bandwidth: float = H200_SUSTAINED_BANDWIDTH):
        return self.flops / flops_rate + self.exposed_bytes / bandwidth


def op_costs(op: str, impl: str, n: int, d: int, v: int, itemsize: int, chunk_rows: int) -> Costs:
    """Costs of one forward + backward; ``op`` in ``token_nll``, ``weighted_ce``, ``atwu_head``."""
    chunks = -(-n // max(1, chunk_rows))
    logits = n * v * itemsize
    dw_rounds = 0 if chunks <= 1 else (chunks - 1) * 8 * v * d + (4 + itemsize) * v * d
    if op == "token_nll":
        flops = 8 * n * d * v
        logits_bytes, exposed = (7 * logits, 3 * logits) if impl != "triton_fused" else (3 * logits, 0)
    else:
        flops = 6 * n * d * v + (4 * n * d if op == "atwu_head" else 0)
        logits_bytes, exposed = (6 * logits, 3 * logits) if impl != "triton_fused" else (3 * logits, 0)
        exposed += 2 * (v * d + n * d) * itemsize  # in-place scale of dW, dH in backward
    return Costs(flops, logits_bytes, exposed + dw_rounds)
