"""Pure-PyTorch row operations on one chunk of raw logits (the CPU path and the test oracle).

The chunk machinery in :mod:`atwu_kernels.chunked` materialises one ``[rows, V]`` buffer of raw
logits ``z`` at a time and hands it to a *row-ops backend*:

``chunk_stats(z, labels, valid, transform, ignore_index) -> (lse, nll)``
    ``lse_i = log Σ_v exp(t_iv)``, ``nll_i = lse_i − t_{i,y_i}`` (0 on ignored rows), fp32,
    ``t = transform(z)``. Does not modify ``z``.

``chunk_coeff_grad_(z, labels, valid, transform, ignore_index, lse, nll, coefficients, rows, write_grad) -> c``
    Forms the row coefficients ``c`` (0 on ignored rows, see :mod:`atwu_kernels.coefficients`)
    and, if ``write_grad``, overwrites ``z`` with ``∂L/∂z`` for ``L = Σ_i c_i ℓ_i``::

        ∂L/∂t_iv = c_i · (softmax(t_i)_v − [v = y_i])
        ∂L/∂z_iv = ∂L/∂t_iv · dt/dz(z_iv)

``chunk_stats_coeff_grad_`` does both (the Triton backend fuses them into one kernel).

On CPU tensors both steps run as two ``torch.compile``-d loop nests (statistics; gradient written
into ``z``), see "Compiled row ops" below; the eager ops described next are the fallback (no C++
compiler, ``ATWU_KERNELS_TORCH_COMPILE=0``, inside an outer ``torch.compile``) and the CUDA path.

Memory and speed (eager): besides the logits chunk itself, this backend holds one fp32 temporary of
:data:`SCRATCH_BYTES` (a row block × a column slice, allocated once per sweep by :func:`workspace`).
The statistics walk row blocks × column slices through it; the gradient of fp32 logits without a
transform is formed in place, three passes over the whole chunk. Ops are few and large on
purpose: each op is one OpenMP parallel region, and on a host shared with other work a region
waits until all its threads are scheduled, so there the op count rather than the bytes sets the
time. Every value is computed by the same element-wise ops and per-row reductions as one
``[rows, COLUMN_SLICE]`` temporary per column slice would give, so results do not depend on the
blocking (a one-row block is avoided: PyTorch reduces a single row in a different order).
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.utils import _python_dispatch

from .coefficients import evaluate
from .transform import LogitTransform

COLUMN_SLICE = 8192
SCRATCH_BYTES = 16 << 20  # the one fp32 temporary: 512 rows × 8192 columns


def _row_block(vocab: int) -> int:
    return max(2, SCRATCH_BYTES // (4 * min(vocab, COLUMN_SLICE)))


def _row_blocks(rows: int, block: int):
    """Row ranges of ``block`` rows; a last block of a single row is merged into its neighbour
    (a one-row reduction takes PyTorch's split-the-row path, whose summation order differs)."""
    start = 0
    while start < rows:
        stop = min(start + block, rows)
        if rows - stop == 1:
            stop = rows
        yield slice(start, stop)
        start = stop


def _gather_raw_target(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Raw logit at each row's label (label clamped; callers mask ignored rows)."""
    index = labels.clamp(0, z.shape[1] - 1).unsqueeze(1)
    return z.gather(1, index).squeeze(1)


def workspace(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """The one fp32 temporary of a sweep: a row block × a column slice. The sweep allocates it once
    for all its chunks: a temporary freed per chunk leaves room for small allocations to settle in
    its place, and the host heap then grows by a new one each chunk."""
    return torch.empty(min(rows, _row_block(vocab) + 1), min(vocab, COLUMN_SLICE), dtype=torch.float32, device=device)


def _block_lse(z: torch.Tensor, transform: LogitTransform, scratch: torch.Tensor) -> torch.Tensor:
    """Online log-sum-exp over column slices of one row block (``t − max`` goes into ``scratch``)."""
    rows, vocab = z.shape
    running_max = torch.full((rows,), float("-inf"), dtype=torch.float32, device=z.device)
    running_sum = torch.zeros(rows, dtype=torch.float32, device=z.device)
    direct = transform.is_identity and z.dtype == torch.float32
    for start in range(0, vocab, COLUMN_SLICE):
        raw = z[:, start : start + COLUMN_SLICE]
        t = scratch[:rows, : raw.shape[1]]
        if direct:  # t = z − max without a copy of z
            new_max = _finite_or_zero(torch.maximum(running_max, raw.amax(dim=1)))
            torch.sub(raw, new_max.unsqueeze(1), out=t)
        else:
            transform.apply_into(raw, t)
            new_max = _finite_or_zero(torch.maximum(running_max, t.amax(dim=1)))
            t.sub_(new_max.unsqueeze(1))
        running_sum.mul_(torch.exp(running_max - new_max))
        running_sum.add_(t.exp_().sum(dim=1))
        running_max = new_max
    return running_max + running_sum.log()


def _finite_or_zero(row_max: torch.Tensor) -> torch.Tensor:
    """The max subtracted before ``exp``: 0 where every logit so far is ``−inf`` (a masked slice or
    block), so that ``exp(−inf − 0) = 0`` rather than ``exp(−inf + inf) = nan``; the row's
    log-sum-exp is then ``0 + log 0 = −inf`` until a finite logit comes."""
    return torch.where(torch.isneginf(row_max), 0.0, row_max)


def _slice_grad_in_place(raw, labels, lse, coeff, start):
    """``raw ← c·(exp(raw − lse) − onehot)`` for fp32 logits under the identity transform."""
    rows, width = raw.shape
    raw.sub_(lse.unsqueeze(1)).exp_().mul_(coeff.unsqueeze(1))
    in_slice = (labels >= start) & (labels < start + width)
    local = (labels - start).clamp(0, width - 1)
    raw.index_put_((torch.arange(rows, device=raw.device), local), torch.where(in_slice, -coeff, 0.0), accumulate=True)


def _slice_grad_copy(raw, labels, lse, coeff, start, transform: LogitTransform, scratch):
    """Same as :func:`_slice_grad_in_place` through an fp32 temporary, with ``dt/dz``."""
    rows, width = raw.shape
    grad_t = transform.apply_into(raw, scratch[:rows, :width])
    grad_t.sub_(lse.unsqueeze(1)).exp_().mul_(coeff.unsqueeze(1))  # c·softmax
    # c·(softmax − onehot): subtract c at the label column when it falls in this slice, in fp32
    in_slice = (labels >= start) & (labels < start + width)
    local = (labels - start).clamp(0, width - 1)
    grad_t.index_put_(
        (torch.arange(rows, device=raw.device), local), torch.where(in_slice, -coeff, 0.0), accumulate=True
    )
    derivative = transform.derivative(raw)
    if isinstance(derivative, torch.Tensor) or derivative != 1.0:
        grad_t.mul_(derivative)
    raw.copy_(grad_t)


def _grad_(z, labels, lse, coeff, transform: LogitTransform, scratch) -> None:
    """Overwrite the chunk's logits with their gradient: fp32 without a transform in place, three
    passes over the whole chunk; otherwise row block × column slice through ``scratch``."""
    if transform.is_identity and z.dtype == torch.float32:
        _slice_grad_in_place(z, labels, lse, coeff, 0)
        return
    rows, width = scratch.shape
    for block in _row_blocks(z.shape[0], rows - 1 if rows > 2 else rows):
        for start in range(0, z.shape[1], width):
            raw = z[block, start : start + width]
            _slice_grad_copy(raw, labels[block], lse[block], coeff[block], start, transform, scratch)


# ---------------------------------------------------------------------------------------------
# Compiled row ops (CPU): the same formulas as one generated C++ loop nest per chunk.
#
# torch.compile (Inductor) turns each of the two bodies below into one OpenMP region over the rows
# that walks each row with the row held in cache: the statistics read the chunk once (max, then
# Σ exp(t − max), then the label's logit), the gradient reads it once and writes ``∂L/∂z`` into the
# same buffer (the copy into the mutated input is where the element-wise result is stored: no
# chunk-sized temporary). Eager PyTorch needs an op, i.e. a pass and an OpenMP region, per step.
# Only on CPU tensors (on CUDA the torch path is the oracle of the Triton backends and stays plain
# PyTorch), never inside an outer torch.compile (which traces the eager path) or under a Python
# dispatch or torch-function mode (which sees the eager ops). Compiling costs seconds per process
# (about 12 s for the first dtype on a 2-core CPU, measured with benchmarks/cpu_peer_timing.py), so by
# default only chunks of at least ``COMPILE_MIN_ELEMENTS`` logits use it (a 512 × 32768 chunk: a real
# vocabulary, where a run amortises the compile); a tiny-vocabulary run stays eager and pays nothing.
# ``ATWU_KERNELS_TORCH_COMPILE=1`` compiles every CPU chunk, ``0`` none. The first failure to compile
# (no C++ compiler, an unsupported platform) warns once and leaves the eager path for the process.
# ---------------------------------------------------------------------------------------------

COMPILE_ENV = "ATWU_KERNELS_TORCH_COMPILE"  # auto (default): large chunks only; 1: every CPU chunk; 0: none
COMPILE_MIN_ELEMENTS = 1 << 24
# one graph per (kernel, dtype, transform stages) and a few dynamic-shape variants: more than
# dynamo's default per-function recompile limit of 8 in a process that uses them all (the tests)
_RECOMPILE_LIMIT = 64
_compile_state: dict[str, object] = {"failed": False, "kernels": None}


def _transformed(z, params, has_scale: bool, has_softcap: bool):
    """``t(z)`` in fp32, in :meth:`LogitTransform.apply_into`'s order (``params``: fp32
    ``[scale, softcap, scale/softcap]``)."""
    t = z.to(torch.float32)
    if has_scale:
        t = t * params[0]
    if has_softcap:
        t = torch.tanh(t / params[1]) * params[1]
    return t


def _stats_body(z, labels, valid, params, has_scale: bool, has_softcap: bool):
    t = _transformed(z, params, has_scale, has_softcap)
    row_max = _finite_or_zero(t.amax(dim=1, keepdim=True))
    lse = (t - row_max).exp().sum(dim=1).log() + row_max.squeeze(1)
    target = t.gather(1, labels.clamp(0, t.shape[1] - 1).unsqueeze(1)).squeeze(1)
    return lse, torch.where(valid, lse - target, 0.0)


def _grad_body(z, labels, lse, coeff, params, has_scale: bool, has_softcap: bool):
    t = _transformed(z, params, has_scale, has_softcap)
    c = coeff.unsqueeze(1)
    at_label = torch.arange(z.shape[1], device=z.device).unsqueeze(0) == labels.unsqueeze(1)
    grad = (t - lse.unsqueeze(1)).exp() * c + torch.where(at_label, -c, 0.0)  # c·softmax − c·onehot
    if has_softcap:  # dt/dz = s·(1 − tanh²(s·z/c))
        u = torch.tanh(z.to(torch.float32) * params[2])
        grad = grad * ((1.0 - u * u) * params[0])
    elif has_scale:
        grad = grad * params[0]
    z.copy_(grad)


def _compiled_kernels():
    if _compile_state["kernels"] is None:
        _compile_state["kernels"] = (
            torch.compile(_stats_body, dynamic=True, fullgraph=True),
            torch.compile(_grad_body, dynamic=True, fullgraph=True),
        )
    return _compile_state["kernels"]


def _use_compiled(z: torch.Tensor, elements: int | None = None) -> bool:
    """Compiled row ops for ``z``? ``elements``: the logits of the whole problem ``z`` is part of
    (a column block of kept logits, :mod:`atwu_kernels.kept`), default ``z``'s own."""
    mode = os.environ.get(COMPILE_ENV, "auto")
    elements = z.numel() if elements is None else elements
    return (
        z.device.type == "cpu"
        and not _compile_state["failed"]
        and (mode == "1" or (mode not in ("0", "1") and elements >= COMPILE_MIN_ELEMENTS))
        and not torch.compiler.is_compiling()
        and _python_dispatch._get_current_dispatch_mode() is None  # e.g. an op-counting mode: eager ops
        and not torch._C._is_torch_function_mode_enabled()
    )


def _params(transform: LogitTransform, device) -> torch.Tensor:
    scale, softcap = transform.scale_or_one, transform.softcap_or_one
    return torch.tensor([scale, softcap, scale / softcap], dtype=torch.float32, device=device)


def _run_compiled(index: int, *args):
    """Kernel ``index`` (0 statistics, 1 gradient) compiled, or ``None`` once compiling has failed."""
    try:
        kernel = _compiled_kernels()[index]
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return kernel(*args), True
    except Exception as error:  # noqa: BLE001 — any compiler failure: the eager path still works
        _compile_state["failed"] = True
        warnings.warn(
            f"atwu_kernels: torch.compile of the CPU row ops failed ({type(error).__name__}: {error}); "
            f"using the eager PyTorch row ops (set {COMPILE_ENV}=0 to skip the attempt)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, False


def _chunk_stats(z, labels, valid, transform: LogitTransform, scratch, elements: int | None = None):
    """``(lse, nll)`` of one chunk (compiled when it can be, else row block by row block)."""
    if _use_compiled(z, elements):
        stages = (transform.scale is not None, transform.softcap is not None)
        out, ok = _run_compiled(0, z, labels, valid, _params(transform, z.device), *stages)
        if ok:
            return out
    lse = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    for block in _row_blocks(z.shape[0], _row_block(z.shape[1])):
        lse[block] = _block_lse(z[block], transform, scratch)
    target = transform.apply(_gather_raw_target(z, labels))
    return lse, torch.where(valid, lse - target, 0.0)


def _chunk_grad_(z, labels, lse, coeff, transform: LogitTransform, scratch, elements: int | None = None) -> None:
    """``z ← ∂L/∂z`` (compiled when it can be, else :func:`_grad_`)."""
    if _use_compiled(z, elements):
        stages = (transform.scale is not None, transform.softcap is not None)
        _, ok = _run_compiled(1, z, labels, lse, coeff, _params(transform, z.device), *stages)
        if ok:
            return
    _grad_(z, labels, lse, coeff, transform, scratch)


def block_lse(z, labels, valid, transform: LogitTransform, scratch, elements: int) -> torch.Tensor:
    """Log-sum-exp over the columns of ``z``, a column block of a larger problem (``labels``
    shifted to the block; only ``lse`` is used)."""
    return _chunk_stats(z, labels, valid, transform, scratch, elements)[0]


def block_grad_(z, labels, lse, coeff, transform: LogitTransform, scratch, elements: int) -> None:
    """``z ← ∂L/∂z`` for a column block of a larger problem: ``lse`` is the whole row's, ``labels``
    shifted to the block (a label outside it matches no column, so no one-hot term is subtracted)."""
    _chunk_grad_(z, labels, lse, coeff, transform, scratch, elements)


class TorchRowOps:
    """Row-wise softmax statistics and in-place logits gradient, in fp32, with torch ops.

    Few, large ops: every op over a block is one OpenMP parallel region, and on a host shared with
    other work each region waits for all its threads to be scheduled, so there the op count rather
    than the bytes sets the time. Statistics go row block by row block through the scratch; the
    coefficients and the (in-place) gradient take the whole chunk at once.
    """

    name = "torch"

    @staticmethod
    def run_blocks(
        z, labels, valid, transform, *, lse=None, coefficients=None, rows=None, write_grad=False, scratch=None
    ):
        """``(lse, nll, c)`` of one chunk (``nll`` None when ``lse`` is given; ``c`` None without
        coefficients), writing the gradient over ``z`` when asked."""
        if scratch is None:
            scratch = workspace(z.shape[0], z.shape[1], z.device)
        nll = None
        if lse is None:
            lse, nll = _chunk_stats(z, labels, valid, transform, scratch)
        if coefficients is None:
            return lse, nll, None
        c = evaluate(coefficients, nll, rows if rows is not None else slice(0, z.shape[0]))
        c = torch.where(valid, c.to(torch.float32), 0.0).contiguous()
        if write_grad:
            _chunk_grad_(z, labels, lse, c, transform, scratch)
        return lse, nll, c

    workspace = staticmethod(workspace)

    @classmethod
    def chunk_stats(cls, z, labels, valid, transform, ignore_index, workspace=None):
        lse, nll, _ = cls.run_blocks(z, labels, valid, transform, scratch=workspace)
        return lse, nll

    @classmethod
    def chunk_coeff_grad_(
        cls, z, labels, valid, transform, ignore_index, lse, nll, coefficients, rows, write_grad, workspace=None
    ):
        return cls.run_blocks(
            z, labels, valid, transform, lse=lse, coefficients=coefficients, rows=rows, write_grad=write_grad,
            scratch=workspace,
        )[2]  # fmt: skip

    @classmethod
    def chunk_stats_coeff_grad_(
        cls, z, labels, valid, transform, ignore_index, coefficients, rows, write_grad, workspace=None
    ):
        return cls.run_blocks(
            z, labels, valid, transform, coefficients=coefficients, rows=rows, write_grad=write_grad, scratch=workspace
        )
