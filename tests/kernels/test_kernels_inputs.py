"""Input rules shared by every op and backend: the label range, and no gradient work when none is wanted."""

from __future__ import annotations

import subprocess
import sys
import traceback

import pytest
import torch
import torch.nn.functional as F
import triton.runtime.interpreter
import triton.runtime.jit
from helpers import IGNORE, IMPLS, device, make_problem
from torch.utils._python_dispatch import TorchDispatchMode

from atwu_kernels import atwu_head, linear_token_nll, weighted_linear_cross_entropy


def _scorer(hidden):
    return torch.full((hidden.shape[-1],), 0.1, device=hidden.device), torch.zeros((), device=hidden.device)


OPS = {
    "token_nll": lambda h, w, y, impl, **kw: linear_token_nll(h, w, y, impl=impl, keep_logits=False, **kw).sum(),
    # the torch backend keeping its logits for backward (one column block here: V < 256)
    "token_nll_kept": lambda h, w, y, impl, **kw: linear_token_nll(
        h, w, y, impl=impl, keep_logits=True if impl == "torch" else None, **kw
    ).sum(),
    "weighted_mean": lambda h, w, y, impl, **kw: weighted_linear_cross_entropy(h, w, y, impl=impl, **kw),
    "weighted_sum": lambda h, w, y, impl, **kw: weighted_linear_cross_entropy(
        h, w, y, reduction="sum", impl=impl, **kw
    ),
    "atwu_head": lambda h, w, y, impl, **kw: (
        atwu_head(h, w, y, y % 2 == 0, *_scorer(h), impl=impl, **kw).loss
    ),
}


# ------------------------------------------------------------------------------- label range


ON_CUDA = device().type == "cuda"
CPU_ONLY = pytest.mark.skipif(ON_CUDA, reason="on CUDA a bad label is a device-side assert (see the CUDA test)")


@CPU_ONLY
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("bad", [50, 57, -1, -101])
def test_out_of_range_label_raises_like_cross_entropy(impl, op, bad):
    hidden, weight, labels, _ = make_problem(12, 8, 50, seed=1)
    labels[7] = bad
    with pytest.raises(IndexError) as reference:
        F.cross_entropy(hidden @ weight.t(), labels, ignore_index=IGNORE)
    with pytest.raises(IndexError, match=rf"label {bad} at flat position 7 is out of range.*\[0, 50\)") as ours:
        OPS[op](hidden, weight, labels, impl)
    assert reference.type is ours.type


@pytest.mark.skipif(not ON_CUDA, reason="the device-side label assert needs CUDA")
@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_range_label_asserts_on_cuda(impl):
    """In a child process (a device-side assert ends the CUDA context), as F.cross_entropy does."""
    code = (
        "import torch, atwu_kernels as k\n"
        "h = torch.randn(12, 8, device='cuda'); w = torch.randn(50, 8, device='cuda')\n"
        "y = torch.randint(0, 50, (12,), device='cuda'); y[7] = 50\n"
        f"k.linear_token_nll(h, w, y, impl={impl!r}); torch.cuda.synchronize()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "labels must be in [0, 50)" in proc.stderr


@CPU_ONLY
@pytest.mark.parametrize("impl", IMPLS)
def test_custom_ignore_index_is_not_out_of_range(impl):
    hidden, weight, labels, _ = make_problem(12, 8, 50, seed=2)
    labels[::3] = -1
    nll = linear_token_nll(hidden, weight, labels, ignore_index=-1, impl=impl)
    expected = F.cross_entropy(hidden @ weight.t(), labels, reduction="none", ignore_index=-1)
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(IndexError):  # −100 is an ordinary (invalid) label when ignore_index is −1
        labels[0] = IGNORE
        linear_token_nll(hidden, weight, labels, ignore_index=-1, impl=impl)


# ------------------------------------------------------------------------------- gradient needs


class _Recorder(TorchDispatchMode):
    """Records each aten op that returns new memory and the shapes it returns, and each Triton launch
    with its compile-time flags. Views are skipped, and so are the copies the Triton interpreter makes
    of kernel arguments (they are not the ops' buffers and do not exist on a GPU)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.calls: list[tuple[str, list[tuple[int, ...]], list[tuple[int, ...]]]] = []
        self.launches: list[tuple[str, dict]] = []
        for cls in (triton.runtime.jit.JITFunction, triton.runtime.interpreter.InterpretedFunction):
            monkeypatch.setattr(cls, "run", self._recording(cls.run))

    def _recording(self, run):
        def wrapper(fn, *args, **kwargs):
            flags = {k: v for k, v in kwargs.items() if k.isupper()}
            self.launches.append((getattr(fn, "__name__", None) or fn.fn.__name__, flags))
            return run(fn, *args, **kwargs)

        return wrapper

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func.overloadpacket.__name__ in ("detach", "alias"):
            return out
        if any("triton/runtime" in frame.filename for frame in traceback.extract_stack(limit=40)):
            return out
        flat = out if isinstance(out, (tuple, list)) else (out,)
        shapes = [tuple(t.shape) for t in flat if isinstance(t, torch.Tensor)]
        inputs = [tuple(t.shape) for t in args if isinstance(t, torch.Tensor)]
        self.calls.append((func.overloadpacket.__name__, inputs, shapes))
        return out

    def produced(self, shape) -> int:
        return sum(shape in shapes for _, _, shapes in self.calls)

    def gemms(self) -> int:
        """GEMMs over the vocabulary (an operand with ``V`` in its shape; the scorer's are ``N×D``)."""
        gemm = ("mm", "addmm", "addmm_", "matmul")
        return sum(name in gemm and any(V in shape for shape in inputs) for name, inputs, _ in self.calls)

    def gradient_kernels(self) -> list[str]:
        """Triton launches that form gradients: the fused path's gradient GEMMs, or a row kernel
        writing ``G`` (``GRAD``) / a logits kernel storing ``E`` for them (``STORE``)."""
        return [
            name
            for name, flags in self.launches
            if name in ("_grad_hidden_kernel", "_grad_weight_kernel") or flags.get("GRAD") or flags.get("STORE")
        ]


N, D, V, CHUNK = 40, 16, 120, 16
CHUNKS = -(-N // CHUNK)


def swept_chunks(labels: torch.Tensor) -> int:
    """Chunks a sweep runs: on CPU only the counted rows are swept (ignored rows skip the GEMMs)."""
    rows = int((labels != IGNORE).sum()) if labels.device.type == "cpu" else labels.numel()
    return -(-rows // CHUNK)


def gradient_gemms(op: str, impl: str, chunks: int, per_chunk: int) -> int:
    """Library GEMMs of a call with gradients: ``per_chunk`` per swept chunk, one more per chunk for
    the token NLL's recomputed logits; kept logits: ``per_chunk`` for their one column block."""
    if op == "token_nll_kept" and impl == "torch":
        return per_chunk
    return per_chunk * chunks + (chunks if op.startswith("token_nll") else 0)


def _work(monkeypatch, op, impl, hidden, weight, labels, backward):
    with monkeypatch.context() as patch, _Recorder(patch) as recorder:
        loss = OPS[op](hidden, weight, labels, impl, chunk_size=CHUNK)
        if backward:
            loss.backward()
    return recorder


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_requires_grad"])
def test_no_gradient_work_when_none_is_wanted(monkeypatch, impl, op, mode):
    """No ``V×D`` or ``N×D`` gradient buffer, only the logits GEMMs (library-GEMM paths) and no
    gradient kernel (Triton paths). The same op with gradients wanted shows all of them, so this
    test would see them."""
    hidden, weight, labels, _ = make_problem(N, D, V, seed=3, ignore_every=5)
    with torch.no_grad():
        expected = OPS[op](hidden, weight, labels, "torch", chunk_size=CHUNK)
    if mode == "no_requires_grad":
        hidden.requires_grad_(False)
        weight.requires_grad_(False)
        recorder = _work(monkeypatch, op, impl, hidden, weight, labels, backward=False)
    else:
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            recorder = _work(monkeypatch, op, impl, hidden, weight, labels, backward=False)
    assert recorder.produced((V, D)) == 0 and recorder.produced((N, D)) == 0
    assert recorder.gradient_kernels() == []
    chunks = swept_chunks(labels)
    assert chunks < CHUNKS or labels.device.type != "cpu"  # 8 of the 40 rows are ignored
    if impl != "triton_fused":
        assert recorder.gemms() == chunks
    with torch.no_grad():
        again = OPS[op](hidden, weight, labels, impl, chunk_size=CHUNK)
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-6)

    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    control = _work(monkeypatch, op, impl, hidden, weight, labels, backward=True)
    assert control.produced((V, D)) >= 1 and control.produced((N, D)) >= 1
    assert (control.gradient_kernels() != []) == (impl != "torch")
    if impl != "triton_fused":
        assert control.gemms() == gradient_gemms(op, impl, chunks, 3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(OPS))
def test_frozen_weight_gets_no_weight_gradient_work(monkeypatch, impl, op):
    hidden, weight, labels, _ = make_problem(N, D, V, seed=4)
    weight.requires_grad_(False)
    recorder = _work(monkeypatch, op, impl, hidden, weight, labels, backward=True)
    assert weight.grad is None and hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert recorder.produced((V, D)) == 0
    assert "_grad_weight_kernel" not in recorder.gradient_kernels()
    if impl != "triton_fused":
        assert recorder.gemms() == gradient_gemms(op, impl, CHUNKS, 2)
