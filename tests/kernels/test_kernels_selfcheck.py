"""The first-use self-check (:mod:`atwu_kernels.selfcheck`): a backend chosen by ``impl=None`` is
compared with the torch path once per configuration; a failing one is replaced by the torch path
with one warning line, a passing one is used; a forced backend (``ATWU_KERNELS_IMPL`` or an explicit
``impl=``) is never checked.

The device default is the torch path off CUDA, so these tests make ``impl=None`` mean ``"triton"``
(as on CUDA) and inject backends built on the torch sweep: fast, and wrong exactly as told."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from helpers import device, make_problem, triton_available

from atwu_kernels import atwu_head, dispatch, linear_token_nll, selfcheck, triton_distill, weighted_linear_cross_entropy
from atwu_kernels.distill import _LinearDistillation, linear_distillation
from atwu_kernels.selfcheck import ENV_VAR, SelfCheckWarning

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs CUDA or TRITON_INTERPRET=1")

OPS = ["token_nll", "weighted_ce", "atwu_head", "distill"]
LABELS = {"token_nll": "token NLL", "weighted_ce": "weighted CE", "atwu_head": "ATWU head", "distill": "distillation"}


@pytest.fixture
def auto_is_triton(monkeypatch):
    """``impl=None`` picks ``"triton"`` here (as on CUDA), with no verdicts and no forcing."""
    monkeypatch.setattr(selfcheck, "_VERDICTS", {})
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(dispatch, "default_impl", lambda dev: "triton")


class Fake:
    """A "triton" backend that is the torch path plus a fault; counts its calls.

    Faults: ``"raise"`` (at launch), ``"nll"`` (NLL/loss + 0.5), ``"nan"``, ``"grad"`` (every
    gradient × 1.1, values right), ``"tiny"`` (NLL/loss + 1e-5: within the fp32 bounds, so a passing
    backend whose results still tell it apart from the torch path). ``only_softcap``: faulty only
    when a soft cap is set, ``"tiny"`` otherwise."""

    def __init__(self, monkeypatch, fault, only_softcap=False):
        self.fault, self.only_softcap, self.calls = fault, only_softcap, 0
        backend = dispatch.Backend("triton", self.sweep, dispatch.TORCH.scorer_scores, dispatch.TORCH.scorer_row_sum)
        monkeypatch.setattr(dispatch, "_triton_backend", lambda name: backend)
        monkeypatch.setattr(triton_distill, "LinearDistillationTriton", self)

    def _fault(self, softcap: bool) -> str:
        return self.fault if softcap or not self.only_softcap else "tiny"

    def sweep(self, hidden, weight, bias, labels, *, plan, **kwargs):
        self.calls += 1
        fault = self._fault(plan.transform.softcap is not None)
        if fault == "raise":
            raise RuntimeError("triton launch failed: out of resources\n    (shared memory, required: 300000)")
        result = dispatch.TORCH.sweep(hidden, weight, bias, labels, plan=plan, **kwargs)
        if result.nll is not None and fault in ("nll", "nan", "tiny"):
            result.nll += {"nll": 0.5, "nan": float("nan"), "tiny": 1e-5}[fault]
        if fault == "grad":
            for g in (result.grad_hidden, result.grad_weight, result.grad_bias):
                if g is not None:
                    g.mul_(1.1)
        return result

    def apply(self, *args):  # LinearDistillationTriton.apply
        self.calls += 1
        fault = self._fault(args[9].softcap is not None)
        if fault == "raise":
            raise RuntimeError("triton launch failed: out of resources\n    (shared memory, required: 300000)")
        loss, nll = _LinearDistillation.apply(*args)
        if fault == "grad":
            return loss * 1.1 - 0.1 * loss.detach(), nll  # the same values, gradients × 1.1
        return loss + {"nll": 0.5, "nan": float("nan"), "tiny": 1e-5}.get(fault, 0.0), nll


def _inputs(seed=0):
    hidden, weight, labels, bias = make_problem(10, 16, 40, seed=seed, bias=True, ignore_every=4)
    gen = torch.Generator().manual_seed(seed + 1)
    extra = dict(
        upstream=torch.randn(10, generator=gen).to(hidden.device),
        weights=(0.5 + torch.rand(10, generator=gen)).to(hidden.device),
        is_forget=(torch.arange(10) % 2 == 0).to(hidden.device),
        scorer=((torch.randn(16, generator=gen) / 4).to(hidden.device), torch.tensor(0.2, device=hidden.device)),
        teacher=(torch.randn(10, 16, generator=gen).to(hidden.device),
                 (torch.randn(40, 16, generator=gen) / 4).to(hidden.device)),
    )  # fmt: skip
    return hidden, weight, labels, bias, extra


def run(op, inputs, impl=None, softcap=None) -> list[torch.Tensor]:
    """The op's outputs and its gradients in hidden, weight and bias."""
    hidden, weight, labels, bias, x = inputs
    kw = dict(bias=bias, softcap=softcap, impl=impl)
    if op == "token_nll":
        out = [linear_token_nll(hidden, weight, labels, **kw)]
        scalar = (out[0] * x["upstream"]).sum()
    elif op == "weighted_ce":
        out = [weighted_linear_cross_entropy(hidden, weight, labels, x["weights"], **kw)]
        scalar = out[0]
    elif op == "atwu_head":
        result = atwu_head(hidden, weight, labels, x["is_forget"], *x["scorer"], **kw)
        out, scalar = list(result), result.loss
    else:
        out = list(linear_distillation(hidden, weight, *x["teacher"], labels, shift=1.0, **kw))
        scalar = (out[0] * x["upstream"]).sum()
    grads = torch.autograd.grad(scalar, (hidden, weight, bias))
    return [t.detach() for t in out] + list(grads)


def assert_same(got, want, what=""):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b), f"{what}: output {i} differs from the torch path's by {(a - b).abs().max()}"


def assert_differs(got, want, what=""):
    assert any(not torch.equal(a, b) for a, b in zip(got, want, strict=True)), f"{what}: equals the torch path"


@contextlib.contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ------------------------------------------------------------------------- failing backends


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("fault", ["raise", "nll", "nan", "grad"])
def test_a_failing_backend_is_replaced_by_the_torch_path_with_one_warning(auto_is_triton, monkeypatch, op, fault):
    fake = Fake(monkeypatch, fault)
    inputs = _inputs()
    torch_result = run(op, inputs, impl="torch")
    assert fake.calls == 0
    with pytest.warns(SelfCheckWarning) as record:
        first = run(op, inputs)
    lines = [str(w.message) for w in record if issubclass(w.category, SelfCheckWarning)]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\n" not in line
    assert line.startswith(f"atwu_kernels: triton on {device()} ({LABELS[op]}, fp32, bias")
    assert line.endswith("; using the torch path for this configuration")
    assert ("raised RuntimeError: triton launch failed: out of resources" in line) == (fault == "raise")
    assert ("off by" in line) == (fault != "raise")
    assert fake.calls >= 1  # the check did run the candidate ...
    assert_same(first, torch_result, f"{op}/{fault} first call")  # ... and the call itself took the torch path
    calls = fake.calls
    with no_warnings():
        second = run(op, inputs)
    assert fake.calls == calls, "the failed backend was called again"
    assert_same(second, torch_result, f"{op}/{fault} second call")
    assert list(selfcheck.verdicts().values()) == ["torch"]


def test_the_warning_names_the_gradient_that_is_off(auto_is_triton, monkeypatch):
    Fake(monkeypatch, "grad")
    with pytest.warns(
        SelfCheckWarning, match=r"gave the hidden gradient off by 0\.1 of its largest entry \(bound 0\.000"
    ):
        run("weighted_ce", _inputs())


# ------------------------------------------------------------------------- passing backends


@pytest.mark.parametrize("op", OPS)
def test_a_correct_backend_passes_silently_and_is_used(auto_is_triton, monkeypatch, op):
    fake = Fake(monkeypatch, "tiny")
    inputs = _inputs()
    torch_result = run(op, inputs, impl="torch")
    explicit = run(op, inputs, impl="triton")
    per_call = fake.calls
    assert per_call >= 1
    with no_warnings():
        first = run(op, inputs)
    check_calls = fake.calls - 2 * per_call
    assert check_calls >= 1  # the check ran it
    with no_warnings():
        second = run(op, inputs)
    assert fake.calls == 3 * per_call + check_calls  # the second call: no check, the backend once
    for result in (first, second):
        assert_same(result, explicit, op)
        assert_differs(result, torch_result, op)
    assert list(selfcheck.verdicts().values()) == ["triton"]


@pytest.mark.parametrize("op", OPS)
def test_the_verdict_is_per_configuration(auto_is_triton, monkeypatch, op):
    """Wrong only with a soft cap: the capped configuration falls back, the uncapped one is used."""
    fake = Fake(monkeypatch, "nll", only_softcap=True)
    inputs = _inputs()
    with pytest.warns(SelfCheckWarning, match="softcap"):
        capped = run(op, inputs, softcap=5.0)
    assert_same(capped, run(op, inputs, impl="torch", softcap=5.0), op)
    with no_warnings():
        plain = run(op, inputs)
        calls = fake.calls
        again = run(op, inputs, softcap=5.0)
        assert fake.calls == calls  # the capped configuration never calls it again
    assert_same(plain, run(op, inputs, impl="triton"), op)
    assert_differs(plain, run(op, inputs, impl="torch"), op)
    assert_same(again, capped, op)
    verdicts = {config.softcap: verdict for config, verdict in selfcheck.verdicts().items()}
    assert verdicts == {True: "torch", False: "triton"}


@pytest.mark.parametrize("op", OPS)
def test_a_backend_wrong_only_in_its_gradients_keeps_its_forward_only_configuration(auto_is_triton, monkeypatch, op):
    fake = Fake(monkeypatch, "grad")
    inputs = _inputs()
    with torch.no_grad(), no_warnings():
        forward = _forward(op, inputs)
    assert fake.calls >= 2  # the check, then the call
    assert [(c.grads, v) for c, v in selfcheck.verdicts().items()] == [((False, False, False), "triton")]
    with pytest.warns(SelfCheckWarning, match="gradient off by"):
        trained = run(op, inputs)
    assert_same(trained, run(op, inputs, impl="torch"), op)
    assert sorted(selfcheck.verdicts().values()) == ["torch", "triton"]
    calls = fake.calls
    with torch.no_grad(), no_warnings():
        assert_same(_forward(op, inputs), forward, op)
    assert fake.calls == calls + 1


def _forward(op, inputs):
    hidden, weight, labels, bias, x = inputs
    if op == "token_nll":
        return [linear_token_nll(hidden, weight, labels, bias=bias)]
    if op == "weighted_ce":
        return [weighted_linear_cross_entropy(hidden, weight, labels, x["weights"], bias=bias)]
    if op == "atwu_head":
        return list(atwu_head(hidden, weight, labels, x["is_forget"], *x["scorer"], bias=bias))
    return list(linear_distillation(hidden, weight, *x["teacher"], labels, shift=1.0, bias=bias))


def test_the_verdict_depends_on_dtype_and_options(auto_is_triton, monkeypatch):
    fake = Fake(monkeypatch, "tiny")
    h, w, y, b, x = _inputs()
    with no_warnings():
        for hidden, weight, bias in ((h, w, b), (h, w, None), (h.detach().double(), w.detach().double(), None)):
            linear_token_nll(hidden, weight, y, bias=bias)
            linear_token_nll(hidden, weight, y, bias=bias, logit_scale=0.5)
            linear_token_nll(hidden, weight, y, bias=bias)  # seen: no new check
    assert len(selfcheck.verdicts()) == 6
    assert set(selfcheck.verdicts().values()) == {"triton"}
    # 4 checks with gradients (a forward and a backward sweep), 2 forward-only ones, and the 9 calls
    assert fake.calls == 4 * 2 + 2 + 9
    configs = list(selfcheck.verdicts())
    assert {(c.hidden, c.grads) for c in configs} == {(torch.float32, (True, True, True)),
                                                      (torch.float32, (True, True, False)),
                                                      (torch.float64, (False, False, False))}  # fmt: skip
    assert {(c.bias is not None, c.logit_scale) for c in configs} == {(True, False), (True, True), (False, False),
                                                                        (False, True)}  # fmt: skip


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_the_check_leaves_the_callers_state_alone(auto_is_triton, monkeypatch, mode):
    """It runs from its own generator, under no_grad or inference mode too (a forward-only
    configuration), and leaves no gradients behind."""
    Fake(monkeypatch, "tiny")
    h, w, y, b, _ = _inputs()
    state = torch.get_rng_state()
    with mode(), no_warnings():
        nll = linear_token_nll(h, w, y, bias=b)
    assert torch.equal(torch.get_rng_state(), state)
    assert [(c.grads, v) for c, v in selfcheck.verdicts().items()] == [((False, False, False), "triton")]
    assert not nll.requires_grad and h.grad is None and w.grad is None
    assert_same([nll], [linear_token_nll(h, w, y, bias=b, impl="triton").detach()])


# ------------------------------------------------------------------------- forced backends


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("how", ["env", "explicit"])
def test_a_forced_backend_is_used_unchecked_even_when_wrong(auto_is_triton, monkeypatch, op, how):
    fake = Fake(monkeypatch, "nll")
    inputs = _inputs()
    torch_result = run(op, inputs, impl="torch")
    if how == "env":
        monkeypatch.setenv(ENV_VAR, "triton")
    with no_warnings():
        first = run(op, inputs, impl=None if how == "env" else "triton")
        per_call = fake.calls
        second = run(op, inputs, impl=None if how == "env" else "triton")
    assert fake.calls == 2 * per_call  # no check: the calls themselves only
    assert_differs(first, torch_result, op)
    assert_same(second, first, op)
    assert selfcheck.verdicts() == {}


def test_the_environment_variable(auto_is_triton, monkeypatch):
    fake = Fake(monkeypatch, "nll")
    inputs = _inputs()
    monkeypatch.setenv(ENV_VAR, "torch")  # forces the torch path where the default is a Triton one
    with no_warnings():
        assert_same(run("weighted_ce", inputs), run("weighted_ce", inputs, impl="torch"))
    assert fake.calls == 0 and selfcheck.verdicts() == {}
    monkeypatch.setenv(ENV_VAR, "triton_fused")  # distillation has no fused backend: its "triton"
    with no_warnings():
        run("distill", inputs)
    assert fake.calls == 1
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='cuda'"):
        run("token_nll", inputs)
    monkeypatch.setenv(ENV_VAR, "auto")  # automatic: checked
    with pytest.warns(SelfCheckWarning):
        run("token_nll", inputs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="off CUDA only")
def test_off_cuda_the_default_is_the_torch_path_and_nothing_is_checked(monkeypatch):
    monkeypatch.setattr(selfcheck, "_VERDICTS", {})
    monkeypatch.delenv(ENV_VAR, raising=False)
    fake = Fake(monkeypatch, "raise")
    inputs = _inputs()
    with no_warnings():
        for op in OPS:
            assert_same(run(op, inputs), run(op, inputs, impl="torch"), op)
    assert fake.calls == 0 and selfcheck.verdicts() == {}


# ------------------------------------------------------------------------- the real kernels


REAL = [(op, impl) for op in OPS for impl in ("triton", "triton_fused") if not (op == "distill" and impl != "triton")]


@pytest.mark.parametrize(("dtype", "grads"), [(torch.float32, (True, True, True)),
                                             (torch.bfloat16, (True, True, True)),
                                             (torch.float32, (False, False, False))])  # fmt: skip
@pytest.mark.parametrize(("op", "impl"), REAL)
def test_the_real_triton_backends_pass_their_check(monkeypatch, op, impl, dtype, grads):
    """No false alarm: each Triton backend passes under the interpreter (or on the GPU) with every
    option on, in fp32 and bf16, with every gradient and forward only (bounds and measured
    margins: the module docstring)."""
    monkeypatch.setattr(selfcheck, "_VERDICTS", {})
    dev = device()
    options = {
        "token_nll": (),
        "weighted_ce": (),
        "atwu_head": (("saturation", "score"), ("score_scale", True), ("score_hidden", None)),
        "distill": (("teacher", dtype), ("teacher_bias", True)),
    }[op]
    config = selfcheck.Config(op, impl, dev, dtype, dtype, dtype, None, True, True, grads, options)
    verdict, message = selfcheck.run_check(config)
    assert (verdict, message) == (impl, None)


def test_a_check_that_cannot_run_keeps_the_torch_path(auto_is_triton, monkeypatch):
    """A configuration the torch path itself cannot run (here: integer weights) is not trusted."""
    fake = Fake(monkeypatch, "tiny")
    config = selfcheck.Config(
        "token_nll", "triton", device(), torch.float32, torch.int64, None, None, False, False, (True, True, False), ()
    )
    verdict, message = selfcheck.run_check(config)
    assert verdict == "torch" and "could not be checked (the torch path raised" in message and "\n" not in message
    assert fake.calls == 0


def test_bfloat16_on_a_device_before_sm80_takes_the_torch_path_with_one_note(auto_is_triton, monkeypatch):
    """A T4 (sm_75) has no bfloat16 tensor cores: bf16 configurations go to the torch path unchecked,
    with one warning line; fp32 on the same device is still checked and used."""
    fake = Fake(monkeypatch, "tiny")
    monkeypatch.setattr(selfcheck, "device_capability", lambda dev: (7, 5))
    h, w, y = (t.to(device()) for t in make_problem(40, 16, 50, seed=3)[:3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = linear_token_nll(h.to(torch.bfloat16), w.to(torch.bfloat16), y)
        again = linear_token_nll(h.to(torch.bfloat16), w.to(torch.bfloat16), y)
    notes = [str(c.message) for c in caught if issubclass(c.category, SelfCheckWarning)]
    assert len(notes) == 1 and "bfloat16 needs sm_80 or newer (this device is sm_75)" in notes[0]
    assert "using the torch path" in notes[0] and "\n" not in notes[0]
    assert fake.calls == 0  # neither checked nor run
    expected = linear_token_nll(h.to(torch.bfloat16), w.to(torch.bfloat16), y, impl="torch")
    assert torch.equal(first, expected) and torch.equal(again, expected)
    calls = fake.calls
    linear_token_nll(h, w, y)  # fp32: checked (passes: "tiny" is within bounds), then the fake backend runs
    assert fake.calls > calls
