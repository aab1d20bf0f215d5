"""The two definitions where we used to differ from open-unlearning, by hand: extraction strength of a row
with no scorable answer token (0, counted in the mean) and Min-K%++'s variance clamp (σ_t ≥ 1e-3)."""

import math

import numpy as np
import pytest
import torch

from atwu_fast.eval import metrics as M
from atwu_fast.eval.scoring import logprob_moments
from atwu_fast.suites.tofu.evaluate import score_entry

LN2 = math.log(2.0)

# ----------------------------------------------------------------------------- extraction strength


def test_extraction_strength_row_without_scorable_token_counts_as_zero():
    preds = [[5, 6, 7], [1, 2], [9, 6, 7]]
    labels = [[5, 6, 7], [-100, -100], [5, 6, 7]]
    # row 0: preds[0:] == labels[0:] -> k = 0 -> ES 1
    # row 1: every label ignored -> N = 0 -> ES 0 (open-unlearning's score for such a row)
    # row 2: preds[1:] = [6, 7] == labels[1:] -> k = 1 of N = 3 -> ES 1 - 1/3 = 2/3
    es = M.extraction_strength(preds, labels)
    np.testing.assert_allclose(es, [1.0, 0.0, 2 / 3], rtol=1e-15)
    # the TOFU / JSONL entry keeps the row in the mean: (1 + 0 + 2/3) / 3 = 5/9 (leaving it out gave 5/6)
    e = score_entry(es)
    assert e["agg_value"] == pytest.approx(5 / 9, rel=1e-15)
    assert e["value_by_index"]["1"] == {"score": 0.0}
    # NaN on request leaves the row out of the mean again
    assert score_entry(M.extraction_strength(preds, labels, empty=np.nan))["agg_value"] == pytest.approx(5 / 6)


def test_extraction_strength_as_tofu_slices_it():
    # TOFU drops the eos prediction (the last answer token): an answer that is only eos leaves no token
    argmax = [np.array([4, 3]), np.array([8])]
    answer = [np.array([4, 2]), np.array([2])]  # row 1: eos alone
    es = M.extraction_strength([a[:-1] for a in argmax], [y[:-1] for y in answer])
    # row 0: [4] vs [4] -> ES 1; row 1: no token -> 0; mean 1/2
    np.testing.assert_array_equal(es, [1.0, 0.0])
    assert score_entry(es)["agg_value"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- Min-K%++ moments


def test_moments_by_hand():
    # p = (1/2, 1/4, 1/4): log p = (-l, -2l, -2l), l = ln 2
    # mu = -(0.5 l + 0.5 * 2l) = -1.5 l ; E[(log p)^2] = 0.5 l^2 + 0.5 * 4 l^2 = 2.5 l^2
    # var = 2.5 l^2 - 2.25 l^2 = 0.25 l^2 -> sigma = 0.5 l
    # uniform row: var = 0 -> clamped at 1e-6 -> sigma = 1e-3
    lp = torch.tensor(np.log([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    mu, sigma = logprob_moments(lp)  # log-probs are their own log-softmax
    np.testing.assert_allclose(mu.numpy(), [-1.5 * LN2, math.log(1 / 3)], rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), [0.5 * LN2, 1e-3], rtol=1e-9)
    assert M.MIN_K_PP_VAR_FLOOR == 1e-6


def test_min_k_plus_plus_on_a_sharpened_distribution_uses_sigma_1e_3():
    # Row A, logits (0, -25, -25): with e = e^-25 and Z = 1 + 2e, p = (1/Z, e/Z, e/Z),
    #   log p = (-log Z, -25 - log Z, -25 - log Z),
    #   mu = -log Z - 50 e / Z,  var = E[(log p)^2] - mu^2 = 625 · 2e/Z · (1 - 2e/Z) ≈ 1.74e-8 < 1e-6
    #   -> sigma = sqrt(1e-6) = 1e-3 (sqrt(var) ≈ 1.32e-4 without the clamp).
    #   Target token 1: z = (log p_1 - mu) / 1e-3 = (-25 + 50 e / Z) / 1e-3; one token -> score -z ≈ 25000.
    # Row B, logits (0, -1000, -1000): e^-1000 underflows, var = 0 exactly -> sigma = 1e-3
    #   (our old floor made it 1e-12); target token 2: z = (-1000 - 0) / 1e-3 -> score 1e6.
    e = math.exp(-25.0)
    z_ = 1 + 2 * e
    var_a = 625 * (2 * e / z_) * (1 - 2 * e / z_)
    assert var_a < 1e-6
    logits = torch.tensor([[0.0, -25.0, -25.0], [0.0, -1000.0, -1000.0]], dtype=torch.float64)
    mu, sigma = logprob_moments(logits)
    # μ_A ≈ −7.2e-10 carries log_softmax's absolute rounding (~1e-16): an absolute tolerance
    np.testing.assert_allclose(mu.numpy(), [-math.log(z_) - 50 * e / z_, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(sigma.numpy(), [1e-3, 1e-3])
    target_lp = torch.log_softmax(logits, -1)[[0, 1], [1, 2]].numpy()
    scores = M.mia_min_k_plus_plus([target_lp[:1], target_lp[1:]], [mu[:1].numpy(), mu[1:].numpy()],
                                   [sigma[:1].numpy(), sigma[1:].numpy()], k=0.4)
    np.testing.assert_allclose(scores, [(25 - 50 * e / z_) / 1e-3, 1000 / 1e-3], rtol=1e-9)
