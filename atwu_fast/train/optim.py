"""The model optimiser: torch AdamW, or bitsandbytes' 8-bit (optionally paged) AdamW.

``optim``:

* ``adamw`` — :class:`torch.optim.AdamW`; two states per parameter in the parameter's dtype
  (8 bytes/param for fp32 weights, 4 for bf16).
* ``adamw_8bit`` — :class:`bitsandbytes.optim.AdamW8bit`: both states block-wise quantised to
  uint8 (2 bytes/param) plus one fp32 absmax per 256-value block and per state (1/32 byte/param).
  Tensors with fewer than ``min_8bit_size`` (4096) elements keep fp32 states (8 bytes/param).
  Runs on CPU tensors with bitsandbytes >= 0.48 (CPU backend of the optimizer kernels).
* ``paged_adamw_8bit`` — :class:`bitsandbytes.optim.PagedAdamW8bit`: the same states in CUDA
  unified memory, paged to host RAM under memory pressure (protects against spikes; no steady-state
  saving). On CPU bitsandbytes falls back to the non-paged behaviour (it warns; we silence that
  warning because the fallback is exact).

The ATWU scorer is not built here: it stays an fp32 SGD (:class:`atwu_fast.scorer.ScorerTrainer`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
MIN_8BIT_SIZE = 4096  # bitsandbytes' default: smaller tensors keep 32-bit states
BLOCK_SIZE = 256  # bitsandbytes' block-wise quantisation block (one fp32 absmax per block and state)


class _CPUPagedFallbackOptimizer:
    """Mixin: no 'Paged optimizers are not supported on CPU' warning on every new state."""

    def step(self, closure=None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
            return super().step(closure)


def _bnb():
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a broken native library
        raise RuntimeError(f"optim=adamw_8bit/paged_adamw_8bit needs bitsandbytes ({exc}); "
                           "pip install 'bitsandbytes>=0.48' or use optim=adamw") from exc
    return bnb


def _check_bnb_device(params: list[torch.Tensor]) -> None:
    """bitsandbytes' 8-bit optimisers support CUDA, CPU (>= 0.48) and XPU tensors, not e.g. MPS."""
    devices = {p.device.type for p in params}
    unsupported = devices - {"cuda", "cpu", "xpu"}
    if unsupported:
        raise RuntimeError(f"8-bit AdamW (bitsandbytes) does not support {', '.join(sorted(unsupported))} tensors; "
                           "use optim=adamw")


def build_optimizer(param_groups: Iterable, name: str = "adamw", lr: float = 1e-3,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """A torch or bitsandbytes AdamW over ``param_groups`` (a list of tensors or of group dicts)."""
    groups = list(param_groups)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}")
    bnb = _bnb()
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    _check_bnb_device(params)
    if name == "adamw_8bit":
        return bnb.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay, min_8bit_size=MIN_8BIT_SIZE)
    paged = bnb.optim.PagedAdamW8bit
    if all(p.device.type == "cpu" for p in params):
        paged = type("PagedAdamW8bit", (_CPUPagedFallbackOptimizer, bnb.optim.PagedAdamW8bit), {})
    return paged(groups, lr=lr, weight_decay=weight_decay, min_8bit_size=MIN_8BIT_SIZE)


def state_bytes_per_param(name: str, numel: int, param_bytes: int) -> float:
    """Bytes of optimiser state for one tensor of ``numel`` elements (the planner's formula)."""
    if name == "adamw":
        return 2.0 * param_bytes * numel
    if numel < MIN_8BIT_SIZE:
        return 8.0 * numel
    blocks = -(-numel // BLOCK_SIZE)
    return 2.0 * numel + 2 * 4.0 * blocks
