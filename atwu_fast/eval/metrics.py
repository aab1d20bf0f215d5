"""Evaluation metrics for TOFU, RWKU, MIA and span alignment, as pure numpy/scipy functions.

Inputs are per-row quantities that the model-side code has already produced (mean answer NLLs,
token log-probs, argmax ids, generations). The definitions follow the reference harness
(open-unlearning) so that numbers are comparable; docs/benchmarks.md states them.

Notation: L̄(a) is the mean token NLL of answer a given its question (EOS included), and
P̄(a) = exp(−L̄(a)) the length-normalised probability P(a|q)^{1/|a|}.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import stats

from ..data.labels import IGNORE_INDEX

# The reference harness adds this to denominators (truth ratio, normalised prob, privleak).
_EPS = 1e-10
# Min-K%++: open-unlearning clamps the variance of log p(v) under v ~ p here (σ_t ≥ 1e−3).
MIN_K_PP_VAR_FLOOR = 1e-6


def _rows(x) -> list[np.ndarray]:
    """A 2-D array or a ragged sequence of 1-D rows, as a list of 1-D float/int arrays."""
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return list(x)
    return [np.asarray(r) for r in x]


# ---------------------------------------------------------------------------------------------
# TOFU probability, truth ratio, forget quality, model utility


def mean_nll_to_prob(mean_nll) -> np.ndarray:
    """P̄(a|q) = exp(−L̄(a)), elementwise."""
    return np.exp(-np.asarray(mean_nll, dtype=np.float64))


def truth_ratio(para_mean_nll, pert_mean_nll) -> np.ndarray:
    """Per-row R_i = exp(−mean_j L̄(ã_ij)) / (exp(−L̄(â_i)) + 1e−10).

    ``para_mean_nll``: [n] mean NLL of the "correct" answer (paraphrased answer on forget/retain,
    the answer itself on real authors / world facts). ``pert_mean_nll``: [n, n_pert] mean NLLs of
    the perturbed answers. The numerator is the geometric mean of the perturbed P̄ (losses are
    averaged before exponentiating). R is wrong/correct, so R < 1 means the truth is preferred.
    """
    para = np.asarray(para_mean_nll, dtype=np.float64)
    pert = np.asarray(pert_mean_nll, dtype=np.float64)
    if pert.ndim == 1:
        pert = pert[:, None]
    if pert.shape[0] != para.shape[0]:
        raise ValueError(f"truth_ratio: {para.shape[0]} correct rows vs {pert.shape[0]} perturbed rows")
    wrong = np.exp(-pert.mean(axis=1))
    correct = np.exp(-para)
    return wrong / (correct + _EPS)


def truth_ratio_forget(r) -> float:
    """Forget-set aggregation ("closer_to_1_better"): mean_i min(R_i, 1/(R_i + 1e−10))."""
    r = np.asarray(r, dtype=np.float64)
    return float(np.mean(np.minimum(r, 1.0 / (r + _EPS))))


def truth_ratio_true_better(r) -> float:
    """Non-forget aggregation ("true_better"): mean_i max(0, 1 − R_i)."""
    r = np.asarray(r, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def normalised_prob(answer_mean_nll, pert_mean_nll) -> np.ndarray:
    """Per-row P̄(a) / (P̄(a) + Σ_j P̄(ã_j) + 1e−10) (real authors / world facts "Prob")."""
    correct = mean_nll_to_prob(answer_mean_nll)
    wrong = mean_nll_to_prob(pert_mean_nll)
    if wrong.ndim == 1:
        wrong = wrong[:, None]
    return correct / (correct + wrong.sum(axis=1) + _EPS)


def forget_quality(r_unlearned, r_retain_model) -> float | None:
    """Two-sample KS-test p-value: scipy.stats.ks_2samp(R_unlearned, R_retain_model).pvalue.

    Both are per-row truth ratios on the forget set. ``None`` when no retain-model values are
    given (the reference harness reports None without retain logs). The KS statistic depends only
    on ranks, so using R or 1/R (legacy TOFU) gives the same p-value.
    """
    if r_retain_model is None:
        return None
    a = np.asarray(r_unlearned, dtype=np.float64)
    b = np.asarray(r_retain_model, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("forget_quality: both samples must be non-empty")
    return float(stats.ks_2samp(a, b).pvalue)


def model_utility(values) -> float:
    """Harmonic mean n / Σ_i 1/v_i (scipy.stats.hmean) of the utility values.

    TOFU uses 9 values: retain {Prob, ROUGE, TR}, real authors and world facts
    {normalised Prob, ROUGE, TR}. If any value is 0 the harmonic mean is 0 (scipy's convention),
    so a model that fails one component completely gets MU = 0. Negative values are an error.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("model_utility: no values")
    if np.any(v < 0):
        raise ValueError("model_utility: values must be non-negative")
    if np.any(v == 0):
        return 0.0
    return float(stats.hmean(v))


# ---------------------------------------------------------------------------------------------
# Generation and memorisation


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-row ROUGE-L recall = LCS(pred, ref) / |ref| in tokens (rouge_score, Porter stemmer).

    ``RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].recall``,
    the TOFU convention (prediction = greedy generation, reference = ground-truth answer).
    """
    if len(predictions) != len(references):
        raise ValueError(f"rouge_l_recall: {len(predictions)} predictions vs {len(references)} references")
    scorer = _rouge_scorer()
    return np.array([scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references)])


def _rwku_sentences(text: str) -> list[list[str]]:
    """The ``rouge`` package's tokens: sentences split at '.', whitespace runs collapsed to one space,
    words split at ' ' (so a blank sentence is the one word ''); case and other punctuation kept."""
    return [" ".join(s.split()).split(" ") for s in text.split(".") if len(s) > 0]


def _lcs_words(ref: list[str], hyp: list[str]) -> set[str]:
    """The words of the longest common subsequence that the ``rouge`` package reconstructs (walking back
    from the end: take a match, else step in ``ref`` when that keeps a strictly longer LCS, else in ``hyp``)."""
    n, m = len(ref), len(hyp)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            table[i][j] = (table[i - 1][j - 1] + 1 if ref[i - 1] == hyp[j - 1]
                           else max(table[i - 1][j], table[i][j - 1]))
    words, i, j = set(), n, m
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_recall_rwku(prediction: str, reference: str) -> float:
    """RWKU's ROUGE-L recall: ``Rouge().get_scores(prediction, reference)[0]["rouge-l"]["r"]`` of the
    ``rouge`` package 1.0.1 (summary-level LCS), reimplemented exactly.

    Text is split into sentences at '.', and sentences into words at spaces only: case and any
    punctuation other than '.' stay part of the word ("Carrie" ≠ "carrie", "Maine," ≠ "Maine"). Recall
    = |∪ over (reference sentence, prediction sentence) pairs of the words of their reconstructed LCS|
    / |distinct reference words|: every distinct word counts once, and sentence order does not matter.
    A prediction that is empty after ``strip()`` is scored as "NOANSWER", as RWKU's ``eval_forget.py``
    does. One with no sentence at all (only dots) scores 0 (the package raises "Hypothesis is empty."
    there, which stops RWKU's evaluation); a reference with no sentence is a ValueError.
    """
    hyp = _rwku_sentences(prediction.strip() or "NOANSWER")
    ref = _rwku_sentences(reference)
    if not ref:
        raise ValueError(f"RWKU ROUGE: the reference {reference!r} has no words")
    if not hyp:
        return 0.0
    common: set[str] = set()
    for r in ref:
        for h in hyp:
            common |= _lcs_words(r, h)
    return len(common) / len({w for r in ref for w in r})


def _aligned(pred_row, label_row, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    preds = np.asarray(pred_row)
    labels = np.asarray(label_row)
    if preds.shape != labels.shape:
        raise ValueError(f"prediction/label length mismatch: {preds.shape} vs {labels.shape}")
    keep = labels != ignore_index
    return preds[keep], labels[keep]


def extraction_strength(pred_ids, label_ids, ignore_index: int = IGNORE_INDEX, empty: float = 0.0) -> np.ndarray:
    """Per-row ES = 1 − k*/N over the N answer tokens.

    ``pred_ids[i][t]`` is the teacher-forced argmax prediction for answer token ``label_ids[i][t]``
    (already shifted; positions whose label is ``ignore_index`` are dropped). k* is the smallest
    k in 0..N−1 with preds[k:] == labels[k:].

    Quirk reproduced from the reference harness: k only runs to N−1, and when no suffix matches
    the loop ends with k = N−1, so ES = 1/N (not 0) both when only the last token matches and when
    nothing matches. A fully memorised answer gives ES = 1. A row with no scorable token (N = 0)
    scores ``empty``: 0 by default, as open-unlearning records it, so the row counts in the mean
    (NaN leaves it out of a ``nanmean``).
    """
    out = []
    for p_row, l_row in zip(_rows(pred_ids), _rows(label_ids), strict=True):
        preds, labels = _aligned(p_row, l_row, ignore_index)
        n = labels.size
        if n == 0:
            out.append(float(empty))
            continue
        k = n - 1
        for start in range(n):
            if np.array_equal(preds[start:], labels[start:]):
                k = start
                break
        out.append(1.0 - k / n)
    return np.array(out)


def exact_memorization(pred_ids, label_ids, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-row EM = (1/N) Σ_t 1[argmax_t = y_t] over the N non-ignored answer tokens (NaN if N = 0)."""
    out = []
    for p_row, l_row in zip(_rows(pred_ids), _rows(label_ids), strict=True):
        preds, labels = _aligned(p_row, l_row, ignore_index)
        out.append(float(np.mean(preds == labels)) if labels.size else float("nan"))
    return np.array(out)


def exact_answer_accuracy(
    generations: Sequence[str],
    value_lists: Sequence[Sequence[str]],
    references: Sequence[str] | None = None,
) -> float:
    """Fraction of rows whose generation contains every fact value of that row.

    Matching is a case-sensitive substring test. A row with no values matches when its full
    reference answer (``references[i]``) is a substring of the generation.
    """
    if len(generations) != len(value_lists):
        raise ValueError(f"exact_answer_accuracy: {len(generations)} generations vs {len(value_lists)} value lists")
    if len(generations) == 0:
        raise ValueError("exact_answer_accuracy: no rows")
    hits = 0
    for i, (gen, values) in enumerate(zip(generations, value_lists)):
        if values:
            hits += all(v in gen for v in values)
        else:
            if references is None:
                raise ValueError(f"exact_answer_accuracy: row {i} has no values and no reference answer was given")
            hits += references[i] in gen
    return hits / len(generations)


# ---------------------------------------------------------------------------------------------
# Membership inference: all scores are "loss-like" (higher = more likely a non-member)


def mia_loss(mean_nll) -> np.ndarray:
    """LOSS attack score: the mean token NLL L̄ of each sample."""
    return np.asarray(mean_nll, dtype=np.float64).copy()


def mia_zlib(mean_nll, texts: Sequence[str]) -> np.ndarray:
    """ZLib attack score: L̄ / len(zlib.compress(text.encode("utf-8"))) per sample."""
    nll = np.asarray(mean_nll, dtype=np.float64)
    if nll.shape[0] != len(texts):
        raise ValueError(f"mia_zlib: {nll.shape[0]} losses vs {len(texts)} texts")
    sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    return nll / sizes


def _min_k_mean(values: np.ndarray, k: float) -> float:
    """−mean of the lowest max(1, ⌊k·n⌋) values; 0.0 for an empty row, as in the reference harness."""
    if values.size == 0:
        return 0.0
    num = max(1, int(values.size * k))
    return float(-np.mean(np.sort(values)[:num]))


def mia_min_k(token_logprobs, k: float = 0.4) -> np.ndarray:
    """Min-K% score per sample: −mean of the lowest max(1, ⌊k·T⌋) token log-probs log p(y_t)."""
    return np.array([_min_k_mean(np.asarray(r, dtype=np.float64), k) for r in _rows(token_logprobs)])


def mia_min_k_plus_plus(token_logprobs, mu, sigma, k: float = 0.4) -> np.ndarray:
    """Min-K%++ score per sample: −mean of the lowest max(1, ⌊k·T⌋) of z_t = (log p(y_t) − μ_t)/σ_t.

    ``mu`` and ``sigma`` are per-token rows aligned with ``token_logprobs``: the mean and standard
    deviation of log p(v) under v ~ p at each position, as
    :func:`atwu_fast.eval.scoring.logprob_moments` computes them (the one implementation; its variance
    is clamped at :data:`MIN_K_PP_VAR_FLOOR`, so σ_t ≥ 1e−3 as in open-unlearning).
    """
    out = []
    for lp, m, s in zip(_rows(token_logprobs), _rows(mu), _rows(sigma), strict=True):
        lp, m, s = (np.asarray(a, dtype=np.float64) for a in (lp, m, s))
        out.append(_min_k_mean((lp - m) / s, k))
    return np.array(out)


def mia_auc(forget_scores, holdout_scores) -> float:
    """roc_auc_score(labels, scores) with label 0 for forget and 1 for holdout samples.

    With loss-like scores, AUC → 1 when forget samples have much lower loss than holdout ones
    (the model still "remembers" them), 0.5 when indistinguishable.
    """
    from sklearn.metrics import roc_auc_score

    f = np.asarray(forget_scores, dtype=np.float64)
    h = np.asarray(holdout_scores, dtype=np.float64)
    labels = np.concatenate([np.zeros(f.size), np.ones(h.size)])
    return float(roc_auc_score(labels, np.concatenate([f, h])))


def privleak(auc_model: float, auc_retain: float = 0.5) -> float:
    """PrivLeak = ((1 − AUC_model) − (1 − AUC_retain)) / ((1 − AUC_retain) + 1e−10) · 100.

    Zero when the model matches the retain model; negative when forget data is more
    distinguishable than for the retain model (under-unlearning), positive for over-unlearning.
    """
    s = 1.0 - auc_model
    r = 1.0 - auc_retain
    return (s - r) / (r + _EPS) * 100.0


# ---------------------------------------------------------------------------------------------
# Span alignment: token scores against ground-truth forget-specific tokens


def _flat_scores_labels(scores, labels, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    s = (
        np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in _rows(scores)])
        if len(scores)
        else np.array([])
    )
    y = np.concatenate([np.asarray(r).ravel() for r in _rows(labels)]) if len(labels) else np.array([])
    if s.shape != y.shape:
        raise ValueError(f"span metric: {s.size} scores vs {y.size} labels")
    keep = y != ignore_index
    s, y = s[keep], y[keep].astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("span metric: labels must be 0/1 (or ignore_index)")
    return s, y


def span_auroc(scores, labels, ignore_index: int = IGNORE_INDEX) -> float:
    """Token-level ROC AUC of ``scores`` for binary ``labels`` (1 = forget-specific token).

    Ties count one half (sklearn roc_auc_score). NaN when only one class is present.
    Accepts flat arrays or ragged per-row sequences; ``ignore_index`` labels are dropped.
    """
    from sklearn.metrics import roc_auc_score

    s, y = _flat_scores_labels(scores, labels, ignore_index)
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def span_average_precision(scores, labels, ignore_index: int = IGNORE_INDEX) -> float:
    """Token-level average precision Σ_n (R_n − R_{n−1}) P_n (sklearn average_precision_score).

    NaN when only one class is present.
    """
    from sklearn.metrics import average_precision_score

    s, y = _flat_scores_labels(scores, labels, ignore_index)
    if np.unique(y).size < 2:
        return float("nan")
    return float(average_precision_score(y, s))
