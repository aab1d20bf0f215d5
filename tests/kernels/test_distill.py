"""linear_distillation against a float64 reference with materialised logits: per-token loss, the
student NLL, and the gradients of hidden / weight / bias under a non-uniform upstream gradient."""

import pytest
import torch
from atwu_kernels.distill import linear_distillation


def reference(h, w, b, th, tw, tb, y, shift, softcap=None, scale=None):
    def logits(hh, ww, bb):
        z = hh @ ww.T + (0 if bb is None else bb)
        if scale is not None:
            z = z * scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        return z

    z = logits(h, w, b)
    u = logits(th, tw, tb).detach().clone()
    valid = y != -100
    yy = torch.where(valid, y, 0)
    u[torch.arange(len(y)), yy] -= shift
    q = torch.softmax(u, -1)
    logp = torch.log_softmax(z, -1)
    loss = -(q * logp).sum(-1) * valid
    nll = -logp.gather(1, yy[:, None])[:, 0] * valid
    return loss, nll


@pytest.mark.parametrize("softcap, scale, with_bias", [(None, None, False), (3.0, None, True), (None, 0.5, False)])
@pytest.mark.parametrize("chunk", [4, 64])
def test_loss_nll_and_gradients_match_float64(softcap, scale, with_bias, chunk):
    g = torch.Generator().manual_seed(0)
    n, d, v = 11, 6, 37
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    th, tw = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(v, d, generator=g, dtype=torch.float64)
    tb = torch.randn(v, generator=g, dtype=torch.float64) if with_bias else None
    y = torch.randint(0, v, (n,), generator=g)
    y[3] = -100  # an ignored row
    upstream = torch.rand(n, generator=g, dtype=torch.float64) * 2  # not uniform: a row-scaling bug shows
    loss, nll = linear_distillation(h, w, th, tw, y, shift=2.5, bias=b, teacher_bias=tb, softcap=softcap,
                                    logit_scale=scale, chunk_size=chunk)
    ref_loss, ref_nll = reference(h, w, b, th, tw, tb, y, 2.5, softcap, scale)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-6)  # fp32 statistics
    torch.testing.assert_close(nll.double(), ref_nll.detach(), rtol=1e-5, atol=1e-6)
    params = [h, w] + ([b] if with_bias else [])
    got = torch.autograd.grad((loss.double() * upstream).sum(), params)
    want = torch.autograd.grad((ref_loss * upstream).sum(), params)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)
        assert e.abs().max() > 1e-3
    assert loss[3] == 0 and nll[3] == 0


def test_shift_moves_the_target_off_the_label():
    """With the student equal to the teacher, the loss without a shift is the teacher's entropy and its
    gradient vanishes; a shift gives a positive gradient on the label's logit (pushes it down)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 9, (5,), generator=g)
    loss, _ = linear_distillation(h, w, h.detach(), w.detach(), y, shift=0.0)
    (gw,) = torch.autograd.grad(loss.sum(), [w])
    assert gw.abs().max() < 1e-5
    loss, _ = linear_distillation(h, w, h.detach(), w.detach(), y, shift=5.0)
    (gh,) = torch.autograd.grad(loss.sum(), [h])
    assert gh.abs().max() > 1e-3


def test_bad_labels_are_refused():
    h, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(IndexError, match="out of range"):
        linear_distillation(h, w, h, w, torch.tensor([0, 5, 1]))
