"""Hand-computed checks of the evaluation metrics (arithmetic in the comments)."""

import itertools
import math
import zlib

import numpy as np
import pytest

from atwu_fast.eval import metrics as M

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- probability / TR


def test_mean_nll_to_prob():
    # exp(-0) = 1, exp(-ln 2) = 1/2, exp(-ln 4) = 1/4
    np.testing.assert_allclose(M.mean_nll_to_prob([0.0, LN2, 2 * LN2]), [1.0, 0.5, 0.25])


def test_truth_ratio_two_rows_and_aggregations():
    para = [1.0, 2.0]
    pert = [[1.0, 3.0], [2.0, 2.0]]
    # row 0: mean pert NLL = 2 -> R = e^-2 / e^-1 = e^-1 ≈ 0.367879
    # row 1: mean pert NLL = 2 -> R = e^-2 / e^-2 = 1
    r = M.truth_ratio(para, pert)
    np.testing.assert_allclose(r, [math.exp(-1), 1.0], rtol=1e-8)
    # geometric mean of probabilities, not arithmetic: (e^-1 + e^-3)/2 / e^-1 ≈ 0.568 would be wrong
    assert abs(r[0] - (math.exp(-1) + math.exp(-3)) / 2 / math.exp(-1)) > 0.1
    # forget: mean(min(e^-1, e), min(1, 1)) = (0.367879 + 1)/2 = 0.683940
    assert M.truth_ratio_forget(r) == pytest.approx((math.exp(-1) + 1) / 2, rel=1e-8)
    # a ratio above 1 folds back: min(e, 1/e) = e^-1
    assert M.truth_ratio_forget([math.e]) == pytest.approx(math.exp(-1), rel=1e-8)
    # true_better: mean(max(0, 1 - e^-1), max(0, 0)) = 0.632121/2 = 0.316060
    assert M.truth_ratio_true_better(r) == pytest.approx((1 - math.exp(-1)) / 2, rel=1e-8)
    # R > 1 clips at 0
    assert M.truth_ratio_true_better([2.0, 0.5]) == pytest.approx(0.25)


def test_truth_ratio_row_mismatch():
    with pytest.raises(ValueError):
        M.truth_ratio([1.0, 2.0], [[1.0, 2.0]])


def test_normalised_prob():
    # P(a) = 1/2; perturbed 1/4, 1/4, 1/8 -> sum 5/8; 0.5 / (0.5 + 0.625) = 4/9
    out = M.normalised_prob([LN2], [[2 * LN2, 2 * LN2, 3 * LN2]])
    np.testing.assert_allclose(out, [4 / 9], rtol=1e-8)


# ----------------------------------------------------------------------------- forget quality


def _ks_exact_pvalue(a, b):
    """Brute force: share of all splits of the pooled sample with D >= observed D (two-sided)."""

    def stat(x, y):
        grid = np.concatenate([x, y])
        fx = np.searchsorted(np.sort(x), grid, side="right") / len(x)
        fy = np.searchsorted(np.sort(y), grid, side="right") / len(y)
        return np.max(np.abs(fx - fy))

    pooled = np.concatenate([a, b])
    d_obs = stat(np.asarray(a), np.asarray(b))
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        total += 1
        hits += stat(pooled[mask], pooled[~mask]) >= d_obs - 1e-12
    return hits / total


def test_forget_quality_identical_is_one():
    assert M.forget_quality([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == pytest.approx(1.0)


@pytest.mark.parametrize("n,m", [(3, 3), (2, 3)])
def test_forget_quality_fully_separated(n, m):
    a = np.arange(n, dtype=float)
    b = 10.0 + np.arange(m, dtype=float)
    # D = 1 is reached only by the two splits "all a below" / "all a above": p = 2 / C(n+m, n)
    # (3,3): 2/20 = 0.1 ; (2,3): 2/10 = 0.2
    expected = 2 / math.comb(n + m, n)
    assert _ks_exact_pvalue(a, b) == pytest.approx(expected)
    assert M.forget_quality(a, b) == pytest.approx(expected, rel=1e-9)


def test_forget_quality_no_retain_logs():
    assert M.forget_quality([0.5], None) is None


# ----------------------------------------------------------------------------- model utility


def test_model_utility_harmonic_mean():
    # 3 / (1/1 + 1/0.5 + 1/0.25) = 3 / 7
    assert M.model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    # not the arithmetic mean (0.5833)
    assert M.model_utility([1.0, 0.5, 0.25]) != pytest.approx(1.75 / 3)


def test_model_utility_zero_and_negative():
    assert M.model_utility([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(ValueError):
        M.model_utility([0.5, -0.1])


# ----------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_recall_by_hand():
    # ref "the cat sat on the mat" = 6 tokens; pred "the cat lay on a mat"
    # LCS = the, cat, on, mat = 4  -> recall 4/6
    # ref "running dogs" -> stems (run, dog); pred "dogs run fast" -> (dog, run, fast): LCS 1 -> 1/2
    # identical text -> 1; empty prediction -> 0
    out = M.rouge_l_recall(
        ["the cat lay on a mat", "dogs run fast", "Hello World", ""],
        ["the cat sat on the mat", "running dogs", "hello world", "something"],
    )
    np.testing.assert_allclose(out, [4 / 6, 1 / 2, 1.0, 0.0])


def test_rouge_l_recall_is_recall_not_precision():
    # pred has 6 tokens, ref 2, both in order -> recall 2/2 = 1 (precision would be 1/3)
    assert M.rouge_l_recall(["a b c d e f"], ["b d"])[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- ES / EM


def test_extraction_strength_cases():
    labels = [1, 2, 3, 4]
    preds = [
        [1, 2, 3, 4],  # full match: k*=0 -> 1 - 0/4 = 1
        [9, 2, 3, 4],  # suffix from 1: k*=1 -> 0.75
        [1, 9, 3, 4],  # suffix from 2: k*=2 -> 0.5 (the matching first token does not help)
        [9, 9, 9, 4],  # only the last token: k*=3 -> 0.25
        [9, 9, 9, 9],  # nothing matches: loop ends at k=N-1=3 -> 0.25 (reference quirk, not 0)
    ]
    out = M.extraction_strength(preds, [labels] * len(preds))
    np.testing.assert_allclose(out, [1.0, 0.75, 0.5, 0.25, 0.25])


def test_extraction_strength_ignore_index_and_ragged():
    # row 0: labels after dropping -100 are [5, 6], preds [5, 7] -> no match -> 1/2 (quirk)
    # row 1: N = 1, match -> 1
    out = M.extraction_strength([[0, 0, 5, 7], [3]], [[-100, -100, 5, 6], [3]])
    np.testing.assert_allclose(out, [0.5, 1.0])


def test_exact_memorization():
    # matches at t=0 and t=2 of 4 -> 0.5; -100 positions are dropped: [7] vs [7] -> 1
    out = M.exact_memorization([[1, 9, 3, 9], [0, 7]], [[1, 2, 3, 4], [-100, 7]])
    np.testing.assert_allclose(out, [0.5, 1.0])


def test_exact_answer_accuracy():
    gens = ["Born in Paris in 1950.", "born in paris", "He wrote Dune.", "Paris"]
    values = [["Paris", "1950"], ["Paris"], [], ["Paris", "1950"]]
    refs = ["x", "x", "Dune", "x"]
    # row 0 all values present; row 1 case differs -> miss; row 2 no values -> "Dune" in gen;
    # row 3 misses "1950" -> 2/4
    assert M.exact_answer_accuracy(gens, values, refs) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.exact_answer_accuracy(["a"], [[]])


# ----------------------------------------------------------------------------- MIA


def test_mia_loss_and_zlib():
    np.testing.assert_allclose(M.mia_loss([1.5, 2.0]), [1.5, 2.0])
    # zlib.compress(b"abc") = 78 9c 4b 4c 4a 06 00 02 4d 01 27 -> 11 bytes; 2.0 / 11
    assert len(zlib.compress(b"abc")) == 11
    np.testing.assert_allclose(M.mia_zlib([2.0], ["abc"]), [2.0 / 11])


def test_mia_min_k():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    # k=0.4: int(5*0.4)=2 lowest = -5, -4 -> 4.5 ; k=0.1: max(1, int(0.5)) = 1 -> 5
    assert M.mia_min_k([lp], k=0.4)[0] == pytest.approx(4.5)
    assert M.mia_min_k([lp], k=0.1)[0] == pytest.approx(5.0)
    # empty row scores 0 as in the reference
    assert M.mia_min_k([[]])[0] == 0.0


def test_mia_min_k_plus_plus():
    # z = (lp - mu) / sigma = [0/1, -1/2, -2/0.5] = [0, -0.5, -4]; k=0.4: int(1.2)=1 -> -(-4) = 4
    out = M.mia_min_k_plus_plus([[-1.0, -2.0, -3.0]], [[-1.0, -1.0, -1.0]], [[1.0, 2.0, 0.5]], k=0.4)
    assert out[0] == pytest.approx(4.0)
    # k=1: mean of all = -(0 - 0.5 - 4)/3 = 1.5
    out = M.mia_min_k_plus_plus([[-1.0, -2.0, -3.0]], [[-1.0, -1.0, -1.0]], [[1.0, 2.0, 0.5]], k=1.0)
    assert out[0] == pytest.approx(1.5)


def test_mia_auc_orientation():
    # forget clearly lower loss than holdout -> every (forget, holdout) pair ordered -> AUC 1
    assert M.mia_auc([0.1, 0.2, 0.3], [1.0, 2.0]) == pytest.approx(1.0)
    # the opposite -> 0
    assert M.mia_auc([1.0, 2.0], [0.1, 0.2]) == pytest.approx(0.0)
    # ties: forget {1,2}, holdout {2,3}; pairs (1,2)=1 (1,3)=1 (2,2)=0.5 (2,3)=1 -> 3.5/4
    assert M.mia_auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.875)


def test_privleak_sign():
    # retain-like model: 0
    assert M.privleak(0.5, 0.5) == pytest.approx(0.0)
    # under-unlearned (AUC 0.9): s=0.1, r=0.5 -> (0.1-0.5)/0.5*100 = -80
    assert M.privleak(0.9, 0.5) == pytest.approx(-80.0)
    # over-unlearned (AUC 0.3): s=0.7 -> (0.7-0.5)/0.5*100 = +40
    assert M.privleak(0.3, 0.5) == pytest.approx(40.0)
    # retain AUC 0.6: r=0.4; model 0.8: s=0.2 -> (0.2-0.4)/0.4*100 = -50
    assert M.privleak(0.8, 0.6) == pytest.approx(-50.0)


# ----------------------------------------------------------------------------- span alignment


def test_span_auroc_with_ties():
    # positives {0.4, 0.8}, negatives {0.1, 0.4}:
    # (0.4>0.1)=1, (0.4=0.4)=0.5, (0.8>0.1)=1, (0.8>0.4)=1 -> 3.5/4 = 0.875
    assert M.span_auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)
    # same data ragged with ignored positions
    assert M.span_auroc([[0.1, 0.4, 99.0], [0.4, 0.8]], [[0, 0, -100], [1, 1]]) == pytest.approx(0.875)


def test_span_average_precision():
    # ranked: 0.9(+) 0.8(-) 0.7(+) 0.6(-); hits at rank 1 (P=1) and rank 3 (P=2/3)
    # AP = 0.5*1 + 0.5*2/3 = 5/6
    assert M.span_average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)


def test_span_one_class_is_nan():
    assert math.isnan(M.span_auroc([0.1, 0.2], [1, 1]))
    assert math.isnan(M.span_average_precision([0.1, 0.2], [0, 0]))


def test_span_bad_labels():
    with pytest.raises(ValueError):
        M.span_auroc([0.1, 0.2], [0, 2])
