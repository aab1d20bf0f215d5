"""First-use self-check: a backend chosen automatically is compared with the PyTorch path once per
configuration before it is trusted.

**Who is checked.** Every public op (:func:`~atwu_kernels.linear_token_nll`,
:func:`~atwu_kernels.weighted_linear_cross_entropy`, :func:`~atwu_kernels.atwu_head`,
:func:`~atwu_kernels.linear_distillation`) picks its backend with :func:`choose`:

* an explicit ``impl="…"`` is used as given and never checked (the kernel tests test the kernels
  themselves through it);
* otherwise the environment variable ``ATWU_KERNELS_IMPL`` (``torch``, ``triton`` or ``triton_fused``)
  forces that backend for every ``impl=None`` call, unchecked: for benchmarks. ``triton_fused`` on
  :func:`~atwu_kernels.linear_distillation`, which has no such backend, means its ``triton``. Unset,
  empty or ``auto``: automatic;
* otherwise the device's default (:func:`atwu_kernels.dispatch.default_impl`). ``"torch"`` (every
  device but CUDA) is the reference and is never checked: nothing runs. A Triton backend (CUDA)
  is checked the first time a *configuration* is seen — op, backend, device, the dtypes of
  ``hidden``/``weight``/``bias``, the autocast dtype, soft cap present, logit scale present, the
  gradients asked for (which of hidden, weight, bias require grad while grad mode is on; none is a
  forward-only configuration), and the op's own options (ATWU head: ``saturation``,
  ``score_scale`` present, ``score_hidden``'s dtype; distillation: the teacher's dtype, teacher bias
  present). The verdict is cached for the process (:func:`verdicts`), so every later call costs
  building the key and a dict lookup. A configuration in a dtype the device lacks (bfloat16 before
  sm_80: a T4) takes the torch path without a check, with the same one-line warning
  (:func:`missing_dtype_support`).

**The check.** A fixed random problem (:data:`ROWS` tokens, :data:`DIM` hidden size, :data:`VOCAB`
vocabulary, chunks of :data:`CHUNK` rows so that several chunks and a ragged last one run, every
seventh label ignored) in the configuration's dtypes, on its device, under the caller's autocast
state, with a soft cap of :data:`SOFTCAP` and a logit scale of :data:`LOGIT_SCALE` where the
configuration has them (the kernels take both as run-time scalars, so any value runs the same
compiled code; these bend the logits noticeably). The op runs once on the candidate and once on
``impl="torch"``, asking for the configuration's gradients (for a random upstream gradient, or of
the scalar loss), so it runs the kernel variants the real calls run; every output and gradient is
compared. The problem comes from its own generator (the global RNG is untouched) and runs with
inference mode off whatever the caller's state. A Python exception from the candidate (a compile
error, a launch error, an unsupported dtype), a non-finite value or an output outside its bound
makes the verdict ``"torch"`` for that configuration, with one warning line
(:class:`SelfCheckWarning`; the first line of an exception's message)::

    atwu_kernels: triton on cuda:0 (token NLL, bf16, softcap, gradients of hidden/weight) gave NLL off by
    3.1 (bound 0.12); using the torch path for this configuration

(one line; wrapped here).

It cannot catch what takes down the CUDA context (an illegal address is sticky) or a failure that
only the caller's own sizes trigger (on CUDA the row kernels' tiles do not depend on the sizes,
so the check compiles the variants the real calls use, but a stride that is not a multiple of 16
compiles another). While a CUDA graph is being captured or ``torch.compile`` traces, the check
cannot run (it reads results on the host); such a call takes the torch path and leaves the
configuration unjudged.

**Bounds.** Both paths compute the logits ``z = h·Wᵀ + b`` in the same compute dtype with fp32
accumulation and do the row work (transform, log-sum-exp, softmax, coefficients) in fp32; they differ
in summation order, in where values are rounded to the compute dtype and (``triton_fused``) in
whether the logits are rounded at all. Let

* ``u`` = the unit roundoff (``finfo.eps / 2``) of the coarsest dtype involved (compute/autocast,
  hidden, weight, bias, teacher; at least fp32's ``u₃₂ = 2⁻²⁴``): bf16 2⁻⁸, fp16 2⁻¹¹, fp32 2⁻²⁴;
* ``u_op`` = the rounding of fp32 GEMM operands on CUDA when TF32 (``2⁻¹¹``) or bf16 (``2⁻⁸``,
  matmul precision ``"medium"``) is allowed, else 0;
* ``m = max |s·z|`` (``s`` the logit scale) and ``a = max s·(|h|·|W|ᵀ + |b|)`` on the check problem
  (``m ≤ a``; ``a`` is what the fp32 accumulation error is relative to), ``N, D, V`` its sizes.

One path's error in any transformed logit, and in each row's log-sum-exp, is at most::

    δ = u·m + 2·u_op·a + (D + V)·u₃₂·(1 + a)

(rounding the GEMM output; rounding its operands; fp32 accumulation over ``D`` and the fp32
row work over ``V``, worst case). The transform is 1-Lipschitz after the scale (``|dt/dz| ≤ s``)
and the log-sum-exp is 1-Lipschitz in the max norm. Hence:

* **NLL** ``ℓ = lse(t) − t_y``: ``2δ`` per path, ``4δ`` between two paths; bound ``8·δ`` per token
  (``c = 8``: a factor 2 of margin for the second-order terms the first-order sum leaves out). The
  check problem has ``m ≈ 3–4.5``, ``a ≈ 6–9``: bounds 0.09–0.14 for bf16 (``u·m`` dominates),
  0.012–0.018 for fp16, 6–9·10⁻⁴ for fp32 (the ``D + V`` accumulation term dominates).
* **Gradients** ``dH = G·W``, ``dW = Gᵀ·H``, ``db = Σ G`` with ``G = c·(softmax(t) − onehot)·dt/dz``:
  per path ``|ΔG| ≤ |c|·p·2δ + u·|G|`` (softmax through ``Δt − Δlse``; ``G`` stored in the
  compute dtype), plus the gradient GEMM's own rounding ``u`` and accumulation ``(V or N)·u₃₂`` of
  ``|G|·|W|``. Compared in the max norm relative to the reference's largest entry, which is within
  a factor 2 of ``max(|G|·|W|)`` on the check problem (random labels, so the one-hot term dominates
  each row and ``p_y ≈ 1/V``; measured: 1.24 for ``dH``, 1.01 for ``dW``, 1.18 for ``db``): bound
  ``2·(4δ + 4u + 2(V + N)·u₃₂)`` relative (``c = 8`` on ``δ + u``): 0.12–0.17 for bf16,
  0.016–0.022 for fp16, 7–9·10⁻⁴ for fp32.
* **Loss** ``L = Σ c_i ℓ_i``: ``8δ·Σ|c_i|`` for given coefficients (weighted CE: ``Σ|c_i| = 1``).
  The ATWU head's coefficients depend on ``ℓ`` (``e^(−β g ℓ)``, ``|Δc/c| ≤ |β|·Δℓ``) and on the
  scores, so its loss bound is ``8δ·(|α| + |γ|)·(1 + |β|·max ℓ)`` plus the scores' share, and its
  gradient bound gains ``|β|·8δ``; the reward ``r = ℓ·e^(−β_r g ℓ)`` moves by at most
  ``(1 + |β_r|ℓ)·(Δℓ + ℓ·Δg)``, the scorer gradient by that times ``g(1−g)·|h|`` averaged over the
  forget rows. Scores: ``σ`` of an fp32 mat-vec over ``D``, ``4·(D·u₃₂ + 2·u_op)·(1 + a_s)``.
* **Distillation** ``lse(t) − Σ q·t``: the teacher's logits carry their own ``δ_T``, and
  ``|Δq| ≤ 2δ_T·q`` per path, so the loss bound is ``8·(δ + δ_T·m)`` and the gradient bound gains
  ``8·δ_T``.

These are worst-case sums. Measured on the check problem under the Triton interpreter (both Triton
backends, every op, every soft cap / scale / bias combination), the largest difference from the
torch path is 0.15 % of its bound in fp32 (NLL ≈ 1e-6 against ≈ 7e-4), 8 % in bf16 and 5 % in fp16.
The bounds are meant to catch a broken backend — an exception, garbage, a wrong formula — not a
bias inside the dtype's own error: in fp32 an NLL off by 1e-3 or a gradient off by 0.1 % fails; in
bf16 the bounds are about a tenth (an NLL off by 0.5 or a gradient off by 20 % fails).

**Cost.** One check is two calls of the op (candidate, torch) on ``32 × 128`` logits plus the bound
arithmetic: on the order of ten milliseconds, once per configuration (a training run has one or
two: the loss with gradients, an evaluation without). Its Triton compilations are those the first
real call triggers anyway (same constexpr flags; on CUDA the tiles do not depend on the sizes),
except ``triton_fused``'s several-chunk ``dW`` accumulation. Afterwards :func:`choose` builds a key
and looks it up (≈ 4 µs on CPU). Off CUDA the default is the torch path and nothing is checked
(≈ 2 µs per call to find that out).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import dispatch
from .inputs import autocast_dtype, grad_needs

ENV_VAR = "ATWU_KERNELS_IMPL"

ROWS, DIM, VOCAB, CHUNK = 32, 64, 128, 12  # the check problem: 3 chunks of 12, 12 and 8 rows
SOFTCAP, LOGIT_SCALE, SHIFT = 3.0, 0.75, 1.0  # soft cap / logit scale where present; distillation's shift
ALPHA, GAMMA, BETA, SCORE_SCALE = 1.0, 1.0, 0.5, 2.0  # ATWU head; score_scale where present
IGNORE = -100
SEED = 0x5E1F
U32 = 2.0**-24

OP_LABELS = {"token_nll": "token NLL", "weighted_ce": "weighted CE", "atwu_head": "ATWU head",
             "distill": "distillation"}  # fmt: skip


class SelfCheckWarning(RuntimeWarning):
    """A backend failed its first-use self-check; the torch path is used for that configuration."""


class Config(NamedTuple):
    """One configuration: the verdict cache's key."""

    op: str
    impl: str
    device: torch.device
    hidden: torch.dtype
    weight: torch.dtype
    bias: torch.dtype | None
    autocast: torch.dtype | None
    softcap: bool
    logit_scale: bool
    grads: tuple[bool, bool, bool]  # gradients asked for: hidden, weight, bias
    options: tuple  # ((name, value), ...) of the op's own options


_VERDICTS: dict[Config, str] = {}


def verdicts() -> dict[Config, str]:
    """A copy of this process's verdicts: configuration → the backend it uses."""
    return dict(_VERDICTS)


def reset() -> None:
    """Forget every verdict (the next call of each configuration is checked again)."""
    _VERDICTS.clear()


def forced_impl(choices: tuple[str, ...]) -> str | None:
    """The backend ``ATWU_KERNELS_IMPL`` forces for an op offering ``choices``, or ``None``."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value in ("", "auto"):
        return None
    if value == "triton_fused" and value not in choices:
        value = "triton"  # linear_distillation: its only Triton backend
    if value not in choices:
        raise ValueError(f"{ENV_VAR}={value!r}: must be one of {choices} or 'auto'")
    return value


def choose(
    op: str,
    impl: str | None,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    softcap,
    logit_scale,
    options: tuple = (),
    choices: tuple[str, ...] = dispatch.IMPLEMENTATIONS,
) -> str:
    """The backend an op call runs on (see the module docstring for the rule)."""
    if impl is not None:
        return impl
    forced = forced_impl(choices)
    if forced is not None:
        return forced
    device = hidden.device
    auto = dispatch.default_impl(device)
    if auto == "torch":
        return auto
    config = Config(
        op, auto, device, hidden.dtype, weight.dtype, None if bias is None else bias.dtype, autocast_dtype(device),
        softcap is not None, logit_scale is not None, grad_needs(hidden, weight, bias), options,
    )  # fmt: skip
    verdict = _VERDICTS.get(config)
    if verdict is None:
        lacking = missing_dtype_support(config)
        if lacking is not None:  # decided without a check: the device cannot run it well
            verdict, message = "torch", f"atwu_kernels: {auto} on {device}: {lacking}; using the torch path for this configuration"
        elif _cannot_sync(device):
            return "torch"
        else:
            verdict, message = run_check(config)
        if message is not None:
            warnings.warn(message, SelfCheckWarning, stacklevel=3)
        _VERDICTS[config] = verdict
    return verdict


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """The CUDA compute capability of ``device`` (None off CUDA)."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def missing_dtype_support(config: Config) -> str | None:
    """Why the device lacks a dtype the configuration computes in, or None: bfloat16 before sm_80 (a T4,
    sm_75, has no bfloat16 tensor cores; the torch path runs it through PyTorch's own kernels)."""
    capability = device_capability(config.device)
    dtypes = {config.hidden, config.weight, config.bias, config.autocast}
    if capability is not None and capability < (8, 0) and torch.bfloat16 in dtypes:
        return f"bfloat16 needs sm_80 or newer (this device is sm_{capability[0]}{capability[1]})"
    return None


def _cannot_sync(device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# ----------------------------------------------------------------------------------- the check


class Bound(NamedTuple):
    value: torch.Tensor | float  # absolute (element-wise or scalar), or relative to max |reference|
    relative: bool = False


def run_check(config: Config) -> tuple[str, str | None]:
    """``(backend to use, warning line or None)`` for ``config``; the candidate is ``config.impl``."""
    make, run, bounds = _PROBLEMS[config.op]
    with torch.inference_mode(False), torch.enable_grad():
        try:
            problem = make(config)
            reference = _host(run(problem, "torch"))
        except Exception as exc:  # noqa: BLE001 - any failure means: do not trust the candidate
            return "torch", _message(config, f"could not be checked (the torch path raised {_describe(exc)})")
        try:
            candidate = _host(run(problem, config.impl))
        except Exception as exc:  # noqa: BLE001
            return "torch", _message(config, f"raised {_describe(exc)}")
        try:
            failures = (_compare(name, candidate.get(name), reference[name], bound)
                        for name, bound in bounds(config, problem, reference).items())  # fmt: skip
            failure = next((f for f in failures if f is not None), None)
        except Exception as exc:  # noqa: BLE001
            failure = f"could not be checked (comparing raised {_describe(exc)})"
    if failure is not None:
        return "torch", _message(config, failure)
    return config.impl, None


def _host(outputs: dict) -> dict:
    return {name: t.detach().to("cpu", torch.float64) for name, t in outputs.items() if t is not None}


def _compare(name: str, got: torch.Tensor | None, want: torch.Tensor, bound: Bound) -> str | None:
    if got is None or got.shape != want.shape:
        return f"gave {name} of shape {None if got is None else tuple(got.shape)} (expected {tuple(want.shape)})"
    error = (got - want).abs()
    if bound.relative:
        scale = max(float(want.abs().max()), 1e-30) if want.numel() else 1.0
        worst, limit = float(error.max()) / scale if error.numel() else 0.0, float(bound.value)
        if not worst <= limit:  # also catches nan
            return f"gave {name} off by {worst:.3g} of its largest entry (bound {limit:.3g})"
        return None
    limit = torch.as_tensor(bound.value, dtype=torch.float64).expand_as(error)
    bad = ~(error <= limit)
    if bool(bad.any()):
        excess = torch.where(bad, (error - limit).nan_to_num(float("inf")), -float("inf"))
        at = int(excess.reshape(-1).argmax())
        return f"gave {name} off by {float(error.reshape(-1)[at]):.3g} (bound {float(limit.reshape(-1)[at]):.3g})"
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def _short(dtype: torch.dtype) -> str:
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))


def describe(config: Config) -> str:
    """``"weighted CE, bf16, softcap, bias"``: the configuration in words."""
    dtypes = sorted({_short(config.hidden), _short(config.weight)})
    parts = [OP_LABELS.get(config.op, config.op), "/".join(dtypes)]
    if config.autocast is not None:
        parts[-1] += f" under {_short(config.autocast)} autocast"
    parts += [flag for flag, on in (("softcap", config.softcap), ("logit scale", config.logit_scale),
                                    ("bias", config.bias is not None)) if on]  # fmt: skip
    asked = [name for name, on in zip(("hidden", "weight", "bias"), config.grads, strict=True) if on]
    parts.append(f"gradients of {'/'.join(asked)}" if asked else "forward only")
    for name, value in config.options:
        if value is True:
            parts.append(name.replace("_", " "))
        elif isinstance(value, torch.dtype):
            parts.append(f"{name.replace('_', ' ')} {_short(value)}")
        elif value not in (None, False):
            parts.append(f"{name}={value}")
    return ", ".join(parts)


def _message(config: Config, failure: str) -> str:
    line = (f"atwu_kernels: {config.impl} on {config.device} ({describe(config)}) {failure}; "
            "using the torch path for this configuration")  # fmt: skip
    return " ".join(line.split())  # one line, whatever the exception text held


# ------------------------------------------------------------------------------- the problems


class Problem(NamedTuple):
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    labels: torch.Tensor
    softcap: float | None
    logit_scale: float | None
    extra: dict  # the op's own inputs

    @property
    def leaves(self) -> tuple[torch.Tensor, ...]:
        """The inputs whose gradients the configuration asks for."""
        return tuple(t for t in (self.hidden, self.weight, self.bias) if t is not None and t.requires_grad)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def _leaf(t: torch.Tensor, config: Config, dtype: torch.dtype, grad: bool) -> torch.Tensor:
    return t.to(config.device, dtype).requires_grad_(grad)


def _base(config: Config, gen: torch.Generator) -> Problem:
    hidden = torch.randn(ROWS, DIM, generator=gen)
    weight = torch.randn(VOCAB, DIM, generator=gen) / DIM**0.5
    bias = 0.5 * torch.randn(VOCAB, generator=gen)
    labels = torch.randint(0, VOCAB, (ROWS,), generator=gen)
    labels[::7] = IGNORE
    grad_h, grad_w, grad_b = config.grads
    return Problem(
        _leaf(hidden, config, config.hidden, grad_h),
        _leaf(weight, config, config.weight, grad_w),
        None if config.bias is None else _leaf(bias, config, config.bias, grad_b),
        labels.to(config.device),
        SOFTCAP if config.softcap else None,
        LOGIT_SCALE if config.logit_scale else None,
        {},
    )


def _common(problem: Problem, impl: str) -> dict:
    return dict(bias=problem.bias, softcap=problem.softcap, logit_scale=problem.logit_scale, chunk_size=CHUNK,
                impl=impl)  # fmt: skip


def _grads(output: torch.Tensor, problem: Problem, upstream=None) -> dict:
    """The gradients the configuration asks for (none for a forward-only one)."""
    if not problem.leaves:
        return {}
    grads = iter(torch.autograd.grad(output, problem.leaves, grad_outputs=upstream))
    names = ("the hidden gradient", "the weight gradient", "the bias gradient")
    inputs = (problem.hidden, problem.weight, problem.bias)
    return {name: next(grads) for name, t in zip(names, inputs, strict=True) if t is not None and t.requires_grad}


def _make_token_nll(config: Config) -> Problem:
    gen = _generator()
    problem = _base(config, gen)
    problem.extra["upstream"] = torch.randn(ROWS, generator=gen).to(config.device)
    return problem


def _run_token_nll(problem: Problem, impl: str) -> dict:
    from .ops import linear_token_nll

    nll = linear_token_nll(problem.hidden, problem.weight, problem.labels, **_common(problem, impl))
    return {"NLL": nll, **_grads(nll, problem, problem.extra["upstream"])}


def _make_weighted_ce(config: Config) -> Problem:
    gen = _generator()
    problem = _base(config, gen)
    problem.extra["weights"] = (0.5 + torch.rand(ROWS, generator=gen)).to(config.device)
    return problem


def _run_weighted_ce(problem: Problem, impl: str) -> dict:
    from .ops import weighted_linear_cross_entropy

    loss = weighted_linear_cross_entropy(problem.hidden, problem.weight, problem.labels, problem.extra["weights"],
                                         **_common(problem, impl))  # fmt: skip
    return {"loss": loss, **_grads(loss, problem)}


def _make_atwu_head(config: Config) -> Problem:
    gen = _generator()
    problem = _base(config, gen)
    options = dict(config.options)
    score_dtype = options.get("score_hidden")
    problem.extra.update(
        is_forget=(torch.arange(ROWS) % 3 != 0).to(config.device),
        scorer_weight=(torch.randn(DIM, generator=gen) / DIM**0.5).to(config.device),
        scorer_bias=torch.tensor(0.1, device=config.device),
        score_hidden=None if score_dtype is None else torch.randn(ROWS, DIM, generator=gen).to(config.device,
                                                                                                 score_dtype),
        saturation=options.get("saturation", "score"),
        score_scale=SCORE_SCALE if options.get("score_scale") else None,
    )  # fmt: skip
    return problem


def _run_atwu_head(problem: Problem, impl: str) -> dict:
    from .head import atwu_head

    x = problem.extra

    result = atwu_head(
        problem.hidden, problem.weight, problem.labels, x["is_forget"], x["scorer_weight"], x["scorer_bias"],
        score_hidden=x["score_hidden"], alpha=ALPHA, gamma=GAMMA, beta=BETA, saturation=x["saturation"],
        score_scale=x["score_scale"], **_common(problem, impl),
    )  # fmt: skip
    return {"loss": result.loss, "NLL": result.nll, "scores": result.scores, "reward": result.reward,
            "the scorer weight gradient": result.scorer_grad_w, "the scorer bias gradient": result.scorer_grad_b,
            **_grads(result.loss, problem)}  # fmt: skip


def _make_distill(config: Config) -> Problem:
    gen = _generator()
    problem = _base(config, gen)
    options = dict(config.options)
    teacher = options.get("teacher", config.weight)
    teacher_bias = 0.5 * torch.randn(VOCAB, generator=gen)
    problem.extra.update(
        teacher_hidden=torch.randn(ROWS, DIM, generator=gen).to(config.device, teacher),
        teacher_weight=(torch.randn(VOCAB, DIM, generator=gen) / DIM**0.5).to(config.device, teacher),
        teacher_bias=teacher_bias.to(config.device, teacher) if options.get("teacher_bias") else None,
        upstream=torch.randn(ROWS, generator=gen).to(config.device),
    )
    return problem


def _run_distill(problem: Problem, impl: str) -> dict:
    from .distill import linear_distillation

    x = problem.extra

    loss, nll = linear_distillation(
        problem.hidden, problem.weight, x["teacher_hidden"], x["teacher_weight"], problem.labels, shift=SHIFT,
        teacher_bias=x["teacher_bias"], **_common(problem, impl),
    )  # fmt: skip
    return {"loss": loss, "NLL": nll, **_grads(loss, problem, x["upstream"])}


# --------------------------------------------------------------------------------- the bounds


def _unit_roundoff(*dtypes: torch.dtype | None) -> float:
    """The coarsest unit roundoff among ``dtypes`` (floating ones), at least fp32's."""
    return max([U32] + [torch.finfo(d).eps / 2 for d in dtypes if d is not None and d.is_floating_point])


def _operand_roundoff(config: Config) -> float:
    """Rounding of fp32 GEMM operands on CUDA (TF32, or bf16 at matmul precision "medium")."""
    if config.device.type != "cuda":
        return 0.0
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return 2.0**-8
    if precision == "high" or torch.backends.cuda.matmul.allow_tf32:
        return 2.0**-11
    return 0.0


def _logit_error(h, w, b, config: Config, u: float) -> tuple[float, float, float]:
    """``(δ, m, a)`` of the module docstring for logits ``s·(h·Wᵀ + b)`` (host tensors; the magnitudes
    in fp32, where this machine's small GEMMs are fast)."""
    scale = abs(LOGIT_SCALE) if config.logit_scale else 1.0
    h, w, b = (None if t is None else t.float() for t in (h, w, b))
    z = h @ w.t() + (0.0 if b is None else b)
    m = scale * float(z.abs().max())
    a = scale * float((h.abs() @ w.abs().t() + (0.0 if b is None else b.abs())).max())
    dim, vocab = w.shape[1], w.shape[0]
    delta = u * m + 2 * _operand_roundoff(config) * a + (dim + vocab) * U32 * (1 + a)
    return delta, m, a


def _host64(t):
    return None if t is None else t.detach().to("cpu", torch.float64)


def _student(config: Config, problem: Problem, *extra_dtypes) -> tuple[float, float, float, float]:
    """``(u, δ, m, a)`` of the student logits."""
    u = _unit_roundoff(config.hidden, config.weight, config.bias, config.autocast, *extra_dtypes)
    delta, m, a = _logit_error(_host64(problem.hidden), _host64(problem.weight), _host64(problem.bias), config, u)
    return u, delta, m, a


def _gradient_bound(u: float, delta: float) -> float:
    """Relative max-norm bound of ``dH``, ``dW``, ``db`` (module docstring)."""
    return 2 * (4 * delta + 4 * u + 2 * (VOCAB + ROWS) * U32)


def _gradient_bounds(reference: dict, relative: float) -> dict:
    return {name: Bound(relative, relative=True) for name in reference if name.endswith(" gradient")
            and "scorer" not in name}  # fmt: skip


def _bounds_token_nll(config: Config, problem: Problem, reference: dict) -> dict:
    u, delta, _, _ = _student(config, problem)
    nll = Bound(8 * delta)
    return {"NLL": nll, **_gradient_bounds(reference, _gradient_bound(u, delta))}


def _bounds_weighted_ce(config: Config, problem: Problem, reference: dict) -> dict:
    u, delta, _, _ = _student(config, problem)
    loss = Bound(8 * delta)  # Σ|c_i| = 1: "mean" of positive weights
    return {"loss": loss, **_gradient_bounds(reference, _gradient_bound(u, delta))}


def _bounds_atwu_head(config: Config, problem: Problem, reference: dict) -> dict:
    x = problem.extra
    u, delta, _, _ = _student(config, problem)
    nll_bound = 8 * delta
    nll, r = reference["NLL"], reference["reward"]
    max_nll = float(nll.max())
    # scores g = σ(h_s·w + b): an fp32 mat-vec over D, σ' ≤ 1/4, two paths: 4·(D·u₃₂ + 2·u_op)·(1 + a_s)
    hs = _host64(problem.hidden if x["score_hidden"] is None else x["score_hidden"])
    a_s = float((hs.abs().float() @ x["scorer_weight"].detach().cpu().abs().float()).max())
    a_s += abs(float(x["scorer_bias"]))
    score_bound = 4 * (DIM * U32 + 2 * _operand_roundoff(config)) * (1 + a_s)
    # the model's coefficients c ∝ g'·e^(−β g' ℓ), g' = min(1, k·g):
    # |Δc/c| ≤ |β|·Δℓ + k·(1/g' + |β|ℓ)·Δg
    k = SCORE_SCALE if x["score_scale"] is not None else 1.0
    g_min = float(reference["scores"].clamp_max(1 / k).min()) * k
    coeff_from_scores = k * (1 / max(g_min, 1e-6) + abs(BETA) * max_nll) * score_bound
    # loss Σ c_i ℓ_i: Σ|c_i|·((1 + |β|ℓ_i)·Δℓ_i + ℓ_i·|Δc_i/c_i| from g), Σ|c_i| ≤ |α| + |γ|
    loss = Bound((abs(ALPHA) + abs(GAMMA)) * ((1 + abs(BETA) * max_nll) * nll_bound + max_nll * coeff_from_scores))
    # reward r = ℓ·e^(−β_r g ℓ) on forget rows (β_r = β): |Δr| ≤ (1 + |β|ℓ)·(Δℓ + ℓ·Δg)
    forget = (x["is_forget"] & (problem.labels != IGNORE)).cpu()
    reward = torch.where(forget, (1 + abs(BETA) * nll) * (nll_bound + nll * score_bound), 0.0)
    # scorer gradient −(1/N_F) Σ_F r·g(1−g)·h: |Δ(r·g(1−g))| ≤ Δr/4 + |r|·Δg, plus fp32 sums over N rows
    per_row = torch.where(forget, reward / 4 + r.abs() * (score_bound + ROWS * U32), 0.0) / max(int(forget.sum()), 1)
    scorer_w = (per_row.float() @ hs.abs().float()).double()
    gradient = _gradient_bound(u, delta) + abs(BETA) * nll_bound + 2 * coeff_from_scores
    return {
        "NLL": Bound(nll_bound), "loss": loss, "scores": Bound(score_bound), "reward": Bound(reward),
        "the scorer weight gradient": Bound(scorer_w), "the scorer bias gradient": Bound(per_row.sum()),
        **_gradient_bounds(reference, gradient),
    }  # fmt: skip


def _bounds_distill(config: Config, problem: Problem, reference: dict) -> dict:
    x = problem.extra
    teacher = x["teacher_weight"].dtype
    u, delta, m, _ = _student(config, problem, teacher)
    delta_t, _, _ = _logit_error(_host64(x["teacher_hidden"]), _host64(x["teacher_weight"]),
                                 _host64(x["teacher_bias"]), config, u)  # fmt: skip
    loss = Bound(8 * (delta + delta_t * m))
    nll = Bound(8 * delta)
    return {"loss": loss, "NLL": nll, **_gradient_bounds(reference, _gradient_bound(u, delta) + 8 * delta_t)}


_PROBLEMS: dict[str, tuple[Callable, Callable, Callable]] = {
    "token_nll": (_make_token_nll, _run_token_nll, _bounds_token_nll),
    "weighted_ce": (_make_weighted_ce, _run_weighted_ce, _bounds_weighted_ce),
    "atwu_head": (_make_atwu_head, _run_atwu_head, _bounds_atwu_head),
    "distill": (_make_distill, _run_distill, _bounds_distill),
}
