"""Every method's loss and gradient against an independent float64 per-token reference."""

import math

import pytest
import torch

from atwu_fast.methods import get_method
from atwu_fast.methods.atwu.params import ATWUParams
from atwu_fast.methods.base import TokenQuantities
from atwu_fast.methods.gradient_ascent import GradDiffParams
from atwu_fast.methods.npo import NPOParams, SimNPOParams
from atwu_fast.methods.token_weighted import SatImpParams, WGAParams


def make_quantities(seed=0, n_seqs=3):
    g = torch.Generator().manual_seed(seed)
    lengths = [4, 7, 2][:n_seqs]
    seq = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    forget = (torch.rand(len(seq), generator=g, dtype=torch.float64) * 3).requires_grad_()
    retain = (torch.rand(9, generator=g, dtype=torch.float64) * 2).requires_grad_()
    ref = torch.rand(len(seq), generator=g, dtype=torch.float64) * 3
    scores = torch.rand(len(seq), generator=g, dtype=torch.float64)
    span_kind = torch.randint(0, 3, (len(seq),), generator=g)
    return TokenQuantities(forget_nll=forget, forget_seq=seq, n_forget_seqs=n_seqs, retain_nll=retain,
                           forget_weights=scores, ref_forget_nll=ref, forget_span_kind=span_kind), lengths


def reference_loss(name, q, lengths, params):
    """Plain-python float64 formulas of docs/method.md ("The model step", "The named methods" and "The
    baselines, in the same loss form"), token by token."""
    f = q.forget_nll.tolist()
    r = q.retain_nll.tolist()
    nf, nr = len(f), len(r)
    retain = sum(r) / nr
    # per-token constant weights (stop-gradient) → the gradient of L_f w.r.t. ℓ_t is −w_t / N_F
    if name in ("grad_ascent", "grad_diff"):
        w = [1.0] * nf
    elif name == "wga":
        w = [math.exp(-x) ** params.beta for x in f]
    elif name == "satimp":
        w = [math.exp(-x) ** params.beta1 * (1 - math.exp(-x)) ** params.beta2 for x in f]
    elif name in ("atwu", "atwu_faithful", "atwu_nll", "atwu_logfit", "atwu_frozen", "atwu_oracle",
                  "atwu_oracle_facts"):
        g = q.forget_weights.tolist()
        if name == "atwu_oracle":  # hard 0/1 mask of author-unique span tokens
            g = [1.0 if k == 2 else 0.0 for k in q.forget_span_kind.tolist()]
        if name == "atwu_oracle_facts":  # hard 0/1 mask of every fact token (pooled 1 or unique 2)
            g = [1.0 if k in (1, 2) else 0.0 for k in q.forget_span_kind.tolist()]
        if params.saturation == "score":
            w = [gi * math.exp(-x) ** (params.beta * gi) for gi, x in zip(g, f)]
        else:
            w = [gi * math.exp(-x) ** params.beta for gi, x in zip(g, f)]
    else:
        w = None
    if w is not None:
        forget = -sum(wi * x for wi, x in zip(w, f)) / nf
        grad_f = [-wi / nf for wi in w]
    else:
        seqs = q.forget_seq.tolist()
        sums = [sum(x for x, s in zip(f, seqs) if s == i) for i in range(len(lengths))]
        if name == "npo":
            ref = q.ref_forget_nll.tolist()
            ref_sums = [sum(x for x, s in zip(ref, seqs) if s == i) for i in range(len(lengths))]
            margins = [params.beta * (a - b) for a, b in zip(sums, ref_sums)]
            dmargin = params.beta
        else:  # simnpo
            margins = [params.beta * (a / n - params.delta) for a, n in zip(sums, lengths)]
            dmargin = None
        forget = sum(-(2 / params.beta) * math.log(1 / (1 + math.exp(-m))) for m in margins) / len(margins)
        # d/dm [−(2/β) log σ(m)] = −(2/β)(1 − σ(m)); mean over sequences
        dm = [-(2 / params.beta) * (1 - 1 / (1 + math.exp(-m))) / len(margins) for m in margins]
        grad_f = [dm[s] * (dmargin if dmargin is not None else params.beta / lengths[s]) for s in seqs]
    alpha = 0.0 if name == "grad_ascent" else params.alpha
    total = params.gamma * forget + alpha * retain
    return total, [params.gamma * gi for gi in grad_f], [alpha / nr] * nr


PARAMS = {
    "grad_ascent": GradDiffParams(alpha=0.0, gamma=1.3),
    "grad_diff": GradDiffParams(alpha=0.7, gamma=1.3),
    "npo": NPOParams(alpha=0.9, gamma=1.1, beta=0.3),
    "simnpo": SimNPOParams(alpha=1.0, gamma=0.125, beta=4.5, delta=0.2),
    "wga": WGAParams(alpha=1.0, gamma=1.0, beta=2.0),
    "satimp": SatImpParams(alpha=0.5, gamma=1.0, beta1=5.0, beta2=1.0),
    "atwu": ATWUParams(alpha=0.9, gamma=4.65, beta=7.37),
    "atwu_faithful": ATWUParams(alpha=1.2, gamma=2.0, beta=4.0),
    "atwu_nll": ATWUParams(alpha=0.8, gamma=1.5, beta=6.0, reward_beta=0.0, reward_norm=True),
    "atwu_logfit": ATWUParams(alpha=1.1, gamma=0.7, beta=3.0, lambda_fit=1.0, lambda_reward=0.0),
    "atwu_frozen": ATWUParams(saturation="raw", beta=3.0),
    "atwu_oracle": ATWUParams(beta=2.0, alpha=0.5),
    "atwu_oracle_facts": ATWUParams(beta=2.5, alpha=0.7, saturation="raw"),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_loss_and_gradient_match_reference(name):
    q, lengths = make_quantities()
    if not name.startswith("atwu"):  # the baselines unweighted (their weighted forms are tested below)
        q.forget_weights = None
    params = PARAMS[name]
    loss = get_method(name).loss(q, params)
    loss.backward()
    ref_loss, ref_grad_f, ref_grad_r = reference_loss(name, q, lengths, params)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    assert torch.allclose(q.forget_nll.grad, torch.tensor(ref_grad_f, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    if get_method(name).uses_retain and params.alpha:
        assert torch.allclose(q.retain_nll.grad, torch.tensor(ref_grad_r, dtype=torch.float64), rtol=1e-9)
    else:
        assert q.retain_nll.grad is None or torch.all(q.retain_nll.grad == 0)


@pytest.mark.parametrize("saturation", ["score", "raw"])
def test_saturated_gradient_equals_bounded_surrogate(saturation):
    """θ-gradient of −γ/N Σ g[p^(βg)]_sg ℓ equals that of (γ/β)·mean(p^(βg) − 1) ("score"),
    and of (γ/β)·mean(g·(p^β − 1)) ("raw"), through ℓ(θ) for a random differentiable ℓ."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(11, 5, dtype=torch.float64)
    seq = torch.zeros(11, dtype=torch.long)
    scores = torch.rand(11, dtype=torch.float64)
    params = ATWUParams(alpha=0.0, gamma=1.7, beta=4.0, saturation=saturation)

    def nll():
        return torch.nn.functional.softplus(x @ theta)  # ℓ ≥ 0, smooth in θ

    q = TokenQuantities(nll(), seq, 1, torch.zeros(0, dtype=torch.float64), forget_weights=scores)
    (grad_loss,) = torch.autograd.grad(get_method("atwu").loss(q, params), theta)
    p = torch.exp(-nll())
    if saturation == "score":
        surrogate = (params.gamma / params.beta) * (p ** (params.beta * scores) - 1).mean()
    else:
        surrogate = (params.gamma / params.beta) * (scores * (p ** params.beta - 1)).mean()
    (grad_surrogate,) = torch.autograd.grad(surrogate, theta)
    assert torch.allclose(grad_loss, grad_surrogate, rtol=1e-10, atol=1e-12)
    assert grad_loss.abs().max() > 1e-3  # a non-trivial gradient


def test_atwu_with_unit_scores_is_wga():
    q, _ = make_quantities(seed=3)
    q.forget_weights = torch.ones_like(q.forget_nll)
    atwu = get_method("atwu").loss(q, ATWUParams(beta=2.0, alpha=1.0, gamma=1.0))
    wga = get_method("wga").loss(q, WGAParams(beta=2.0))
    assert atwu.item() == pytest.approx(wga.item(), rel=1e-12)


def test_methods_without_retain_ignore_retain_tokens():
    q, _ = make_quantities()
    q.forget_weights = None
    loss = get_method("grad_ascent").loss(q, GradDiffParams(alpha=5.0))
    assert loss.item() == pytest.approx(-q.forget_nll.mean().item())


def test_npo_requires_reference_and_atwu_requires_scores():
    q, _ = make_quantities()
    q.ref_forget_nll = None
    with pytest.raises(ValueError, match="reference"):
        get_method("npo").loss(q, NPOParams())
    q.forget_weights = None
    with pytest.raises(ValueError, match="scores"):
        get_method("atwu").loss(q, ATWUParams())


# --------------------------------------------------------------------------- the comparison set and plug-ins


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_dpo_loss_and_gradients_match_the_formula():
    """L = −(2/β)·mean_s log σ(β·[(Σℓ − Σℓ_ref)(loser) − (Σℓ_w − Σℓ_w,ref)(winner)])."""
    from atwu_fast.methods.preference import DPOParams

    q, lengths = make_quantities(seed=4)
    q.forget_weights = None
    win = torch.tensor([2.0, 5.0, 1.0], dtype=torch.float64, requires_grad=True)
    win_ref = torch.tensor([2.5, 4.0, 1.5], dtype=torch.float64)
    q.extras.update(winner_nll_sum=win, winner_ref_sum=win_ref)
    params = DPOParams(alpha=0.6, gamma=1.4, beta=0.3)
    loss = get_method("dpo").loss(q, params)
    loss.backward()
    f, ref, seqs = q.forget_nll.tolist(), q.ref_forget_nll.tolist(), q.forget_seq.tolist()
    loser = [sum(a - b for a, b, s in zip(f, ref, seqs) if s == i) for i in range(3)]
    margins = [params.beta * (lo - (w - wr)) for lo, w, wr in zip(loser, win.tolist(), win_ref.tolist())]
    forget = sum(-(2 / params.beta) * math.log(sigmoid(m)) for m in margins) / 3
    retain = sum(q.retain_nll.tolist()) / q.retain_nll.numel()
    assert loss.item() == pytest.approx(params.gamma * forget + params.alpha * retain, rel=1e-10)
    dm = [-(2 / params.beta) * (1 - sigmoid(m)) / 3 * params.gamma for m in margins]  # dL/dmargin_s
    assert torch.allclose(q.forget_nll.grad, torch.tensor([dm[s] * params.beta for s in seqs], dtype=torch.float64))
    assert torch.allclose(win.grad, torch.tensor([-d * params.beta for d in dm], dtype=torch.float64))


def test_rmu_loss_is_the_two_activation_mses():
    from atwu_fast.methods.rmu import RMUParams

    g = torch.Generator().manual_seed(5)
    q, _ = make_quantities(seed=5)
    q.forget_weights = None
    n_f, n_r, d = q.forget_nll.numel(), q.retain_nll.numel(), 4
    q.extras.update(act_forget=torch.randn(n_f, d, generator=g, dtype=torch.float64, requires_grad=True),
                    act_retain=torch.randn(n_r, d, generator=g, dtype=torch.float64, requires_grad=True),
                    act_reference=torch.randn(n_r, d, generator=g, dtype=torch.float64),
                    control=torch.randn(d, generator=g, dtype=torch.float64))
    params = RMUParams(alpha=3.0, gamma=0.5)
    loss = get_method("rmu").loss(q, params)
    e = q.extras
    forget = sum(((a - e["control"]) ** 2).mean().item() for a in e["act_forget"]) / n_f
    retain = sum(((a - r) ** 2).mean().item() for a, r in zip(e["act_retain"], e["act_reference"])) / n_r
    assert loss.item() == pytest.approx(params.gamma * forget + params.alpha * retain, rel=1e-6)


def test_undial_and_seul_are_token_means_of_their_quantities():
    from atwu_fast.methods.seul import SEULParams
    from atwu_fast.methods.undial import UNDIALParams

    q, _ = make_quantities(seed=6)
    q.forget_weights = None
    q.extras["distill"] = torch.rand(q.forget_nll.numel(), dtype=torch.float64)
    params = UNDIALParams(alpha=0.0, gamma=2.0)
    assert get_method("undial").loss(q, params).item() == pytest.approx(2.0 * q.extras["distill"].mean().item())
    mask = torch.tensor([1.0, 0, 1, 0] + [0] * 7 + [1, 1], dtype=torch.float64)
    q.forget_weights = mask
    seul = get_method("seul").loss(q, SEULParams(alpha=0.0, gamma=1.0))
    assert seul.item() == pytest.approx(-(mask * q.forget_nll).sum().item() / q.forget_nll.numel())


@pytest.mark.parametrize("name", ["grad_diff", "npo", "simnpo", "undial"])
def test_weighted_forms_read_the_token_weights(name):
    """With weights w: ascent −Σwℓ/N_F, NPO Σ_t w(ℓ − ℓ_ref) per sequence, SimNPO Σwℓ/Σw, UNDIAL Σw·CE/N_F;
    w ≡ 1 gives the unweighted loss exactly."""
    q, lengths = make_quantities(seed=7)
    q.extras["distill"] = torch.rand(q.forget_nll.numel(), dtype=torch.float64)
    method = get_method(name)
    params = {"grad_diff": GradDiffParams(alpha=0.0), "npo": NPOParams(alpha=0.0, beta=0.4),
              "simnpo": SimNPOParams(alpha=0.0, beta=2.0, delta=0.1)}.get(name)
    if params is None:
        from atwu_fast.methods.undial import UNDIALParams

        params = UNDIALParams(alpha=0.0)
    w = q.forget_weights.tolist()
    f, seqs = q.forget_nll.tolist(), q.forget_seq.tolist()
    if name == "grad_diff":
        expected = -sum(a * b for a, b in zip(w, f)) / len(f)
    elif name == "undial":
        expected = sum(a * b for a, b in zip(w, q.extras["distill"].tolist())) / len(f)
    elif name == "npo":
        ref = q.ref_forget_nll.tolist()
        sums = [sum(wi * (a - r) for wi, a, r, s in zip(w, f, ref, seqs) if s == i) for i in range(3)]
        expected = sum(-(2 / params.beta) * math.log(sigmoid(params.beta * x)) for x in sums) / 3
    else:
        means = [sum(wi * a for wi, a, s in zip(w, f, seqs) if s == i) / sum(wi for wi, s in zip(w, seqs) if s == i)
                 for i in range(3)]
        expected = sum(-(2 / params.beta) * math.log(sigmoid(params.beta * (m - params.delta))) for m in means) / 3
    assert method.loss(q, params).item() == pytest.approx(params.gamma * expected, rel=1e-10)
    unweighted = method.loss(q, params).item()
    q.forget_weights = torch.ones_like(q.forget_nll)
    ones = method.loss(q, params).item()
    q.forget_weights = None
    assert ones == method.loss(q, params).item() and unweighted != ones  # w ≡ 1 is the plain loss, bit for bit
