"""Per-row loss coefficients ``c_i`` of a loss ``L = Σ_i c_i ℓ_i`` (the ``c_i`` held constant).

Every op in this package reduces to that form, so one logits gradient serves them all:
``∂L/∂t_i = c_i·(softmax(t_i) − onehot(y_i))``.

* weighted cross-entropy: ``c_i = w_i / Σ_valid w`` (``"mean"``) or ``w_i`` (``"sum"``) — known
  before the sweep, passed as a tensor;
* per-token NLL backward: ``c_i = ∂out/∂ℓ_i``, the upstream gradient — a tensor;
* the ATWU head: ``c_i`` depends on the row's own ``ℓ_i`` (the saturation ``p^(β g) = e^(−β g ℓ)``),
  so it is formed per row once the row's log-sum-exp is known — :class:`AtwuCoefficients`.

The PyTorch path evaluates :meth:`AtwuCoefficients.__call__` per chunk; the Triton paths evaluate
the same rule inside their row kernels from :meth:`AtwuCoefficients.kernel_args`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

FORGET, RETAIN = 1, 2  # population codes in the int8 tensor handed to kernels (0: ignored)


def atwu_token_coefficients(
    nll: torch.Tensor,
    scores: torch.Tensor,
    forget: torch.Tensor,
    retain: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    beta: float,
    saturation: str,
    n_forget: torch.Tensor,
    n_retain: torch.Tensor,
) -> torch.Tensor:
    """Per-row ``c_i`` of ``L = α/N_R Σ_R ℓ − γ/N_F Σ_F g·[p^(β_eff)]_sg·ℓ``, ``p = exp(−ℓ)``.

    ``β_eff = β·g`` (``saturation="score"``) or ``β`` (``"raw"``); ``g`` and ``p`` are constants,
    so ``∂L/∂ℓ_i = c_i`` and the logits gradient of row i is ``c_i·(softmax − onehot)``.
    """
    exponent = beta * scores if saturation == "score" else torch.full_like(scores, beta)
    forget_weight = scores * torch.exp(-exponent * nll)
    return torch.where(forget, -gamma * forget_weight / n_forget, torch.where(retain, alpha / n_retain, 0.0))


@dataclass
class AtwuCoefficients:
    """The ATWU rule over all ``N`` rows; callable per chunk as ``(nll_chunk, rows) -> c_chunk``."""

    scores: torch.Tensor  # [N] fp32, the g used by the model loss (after any score_scale)
    forget: torch.Tensor  # [N] bool, valid forget rows
    retain: torch.Tensor  # [N] bool, valid retain rows
    alpha: float
    gamma: float
    beta: float
    saturation: str
    n_forget: torch.Tensor  # [] fp32, ≥ 1
    n_retain: torch.Tensor  # [] fp32, ≥ 1

    def __call__(self, nll_chunk: torch.Tensor, rows: slice) -> torch.Tensor:
        return atwu_token_coefficients(
            nll_chunk,
            self.scores[rows],
            self.forget[rows],
            self.retain[rows],
            alpha=self.alpha,
            gamma=self.gamma,
            beta=self.beta,
            saturation=self.saturation,
            n_forget=self.n_forget,
            n_retain=self.n_retain,
        )

    def select(self, rows: torch.Tensor) -> AtwuCoefficients:
        """The rule over ``rows`` only (the population sizes stay those of all rows)."""
        return dataclasses.replace(self, scores=self.scores[rows], forget=self.forget[rows], retain=self.retain[rows])

    def population(self) -> torch.Tensor:
        """int8 ``[N]``: :data:`FORGET`, :data:`RETAIN` or 0."""
        return (self.forget.to(torch.int8) * FORGET + self.retain.to(torch.int8) * RETAIN).contiguous()

    @functools.cached_property
    def kernel_args(self) -> dict:
        """Tensors and scalars the Triton kernels read (``N_F``/``N_R`` stay on the device)."""
        return dict(
            scores=self.scores.contiguous(),
            population=self.population(),
            counts=torch.stack([self.n_forget.reshape(()), self.n_retain.reshape(())]).to(torch.float32),
            alpha=float(self.alpha),
            gamma=float(self.gamma),
            beta=float(self.beta),
            score_saturation=self.saturation == "score",
        )


def evaluate(coefficients, nll_chunk: torch.Tensor, rows: slice) -> torch.Tensor:
    """``c`` of one chunk from a tensor ``[N]`` or an :class:`AtwuCoefficients` rule."""
    if isinstance(coefficients, torch.Tensor):
        return coefficients[rows]
    return coefficients(nll_chunk, rows)
