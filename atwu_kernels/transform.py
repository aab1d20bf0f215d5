"""The element-wise map from raw logits to the logits that enter the softmax.

Models apply, after ``z = h·Wᵀ (+ bias)``:

* an optional multiplicative ``logit_scale`` ``s`` (Cohere-style), then
* an optional Gemma-2 soft cap ``c``: ``t = c·tanh(s·z / c)``.

Derivative used by every backward path (chain rule through the map)::

    dt/dz = s                          (no cap)
    dt/dz = s · (1 − tanh²(s·z / c))   (with cap)

Both the torch and the Triton row operations read this one description, so the two
implementations cannot drift apart on the order of bias → scale → cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitTransform:
    """``t = softcap·tanh(scale·z/softcap)``; ``None`` means the identity for that stage."""

    scale: float | None = None
    softcap: float | None = None

    @staticmethod
    def build(logit_scale: float | None, softcap: float | None) -> LogitTransform:
        if softcap is not None and not float(softcap) > 0:
            raise ValueError(f"softcap must be positive, got {softcap}")
        return LogitTransform(
            scale=None if logit_scale is None else float(logit_scale),
            softcap=None if softcap is None else float(softcap),
        )

    def kwargs(self) -> dict:
        """As the ops' keyword arguments: ``op(..., **transform.kwargs())``."""
        return {"logit_scale": self.scale, "softcap": self.softcap}

    @property
    def is_identity(self) -> bool:
        return self.scale is None and self.softcap is None

    @property
    def scale_or_one(self) -> float:
        return 1.0 if self.scale is None else self.scale

    @property
    def softcap_or_one(self) -> float:
        return 1.0 if self.softcap is None else self.softcap

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Fresh fp32 tensor ``t(raw)``; never writes into ``raw``."""
        return self.apply_into(raw, torch.empty(raw.shape, dtype=torch.float32, device=raw.device))

    def apply_into(self, raw: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``t ← t(raw)`` in the fp32 buffer ``t`` (same shape); returns ``t``."""
        t.copy_(raw)
        if self.scale is not None:
            t.mul_(self.scale)
        if self.softcap is not None:
            t.div_(self.softcap).tanh_().mul_(self.softcap)
        return t

    def derivative(self, raw: torch.Tensor) -> torch.Tensor | float:
        """``dt/dz`` at ``raw`` (a Python float when it is constant)."""
        if self.softcap is None:
            return self.scale_or_one
        u = raw.to(torch.float32, copy=True).mul_(self.scale_or_one / self.softcap).tanh_()
        return u.mul_(u).neg_().add_(1.0).mul_(self.scale_or_one)
