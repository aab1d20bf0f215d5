"""Peers' fused linear cross-entropy, called the same way (``pip install -e ".[bench]"``).

* ``liger`` — Liger-Kernel's ``liger_fused_linear_cross_entropy`` (Triton; CUDA only here: on a
  CPU it would run under the Triton interpreter, whose time and memory are not the kernel's);
* ``cce`` — Cut Cross-Entropy's ``linear_cross_entropy(impl="cce")`` (Triton; needs CUDA);
* ``cce_torch_compile`` — CCE's ``impl="torch_compile"`` (``torch.compile`` of the materialised
  logits and ``F.cross_entropy``; runs on CPU too, needs a C++ compiler there).

All return the per-token NLL (``reduction="none"``, 0 on ignored rows), so a benchmark applies the
same per-token weights to every variant. Neither peer has per-token weights of its own.
"""

from __future__ import annotations

import importlib.util
import shutil

import torch

PEERS = ("liger", "cce", "cce_torch_compile")


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why ``name`` cannot be measured on ``device`` (None when it can)."""
    module = {"liger": "liger_kernel", "cce": "cut_cross_entropy", "cce_torch_compile": "cut_cross_entropy"}[name]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    if name in ("liger", "cce") and device.type != "cuda":
        return f"{name} runs Triton kernels; without CUDA they run only under the Triton interpreter, not measurable"
    if name == "cce_torch_compile" and device.type == "cpu" and shutil.which("g++") is None:
        return "torch.compile on CPU needs a C++ compiler (g++ not found)"
    return None


def peer_token_nll(name: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of ``hidden @ weightᵀ`` by peer ``name`` (fp32, 0 on ignored rows)."""
    if name == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        nll = liger_fused_linear_cross_entropy(hidden, weight, labels, ignore_index=-100, reduction="none")
    elif name in ("cce", "cce_torch_compile"):
        from cut_cross_entropy import linear_cross_entropy

        impl = "cce" if name == "cce" else "torch_compile"
        nll = linear_cross_entropy(hidden, weight, labels, ignore_index=-100, reduction="none", impl=impl)
    else:
        raise ValueError(f"unknown peer {name!r}; one of {PEERS}")
    return nll.float()


def peer_mean_loss(name: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The peer's own mean reduction (its gradient-in-forward fast path where it has one)."""
    if name == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return liger_fused_linear_cross_entropy(hidden, weight, labels, ignore_index=-100, reduction="mean")
    from cut_cross_entropy import linear_cross_entropy

    impl = "cce" if name == "cce" else "torch_compile"
    return linear_cross_entropy(hidden, weight, labels, ignore_index=-100, reduction="mean", impl=impl)
