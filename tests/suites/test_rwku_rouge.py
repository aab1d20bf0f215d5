"""RWKU scored the way RWKU's eval_forget.py / eval_neighbor.py score it: ROUGE-L recall of the ``rouge``
package 1.0.1 (cases derived by hand below, and equality with the package itself), RWKU's probe prompts,
and Min-K%++ moments in float64."""

import numpy as np
import pytest
import torch
from fixtures.tiny import RWKU_DIR, save_tiny_model, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge import Rouge
from scipy.special import logsumexp
from transformers import AutoModelForCausalLM, AutoTokenizer

from atwu_fast.data.formatting import Formatter
from atwu_fast.eval.metrics import rouge_l_recall_rwku
from atwu_fast.eval.scoring import logprob_moments, row_tokens
from atwu_fast.suites.rwku import evaluate as rwku
from atwu_fast.suites.rwku.suite import load_rwku_sets

# (prediction, reference, RWKU's recall, rouge_score's recall), each derived by hand:
# RWKU: sentences split at '.', words at ' ' (case and other punctuation kept), recall =
# |union of the words of each (reference sentence, prediction sentence) LCS| / |distinct reference words|.
# rouge_score: lowercase, non-alphanumerics become spaces, recall = LCS / reference tokens.
CASES = [
    # the examples: case and punctuation are part of the word for RWKU
    ("carrie", "Carrie", 0.0, 1.0),
    ("He was born in Portland, Maine, in 1947.", "Maine", 0.0, 1.0),  # "Maine," != "Maine"
    # distinct words once: reference {New, "York,", York} (3); LCS "New York" -> 2/3; rouge_score 2/4
    ("New York", "New York, New York", 2 / 3, 2 / 4),
    # reference {Paris, London} (2), LCS {Paris} -> 1/2; rouge_score: 1 of 3 tokens
    ("Paris", "Paris Paris London", 1 / 2, 1 / 3),
    # summary level: each prediction sentence is matched on its own, order across sentences is free
    ("Rowling. Joanne", "Joanne Rowling", 1.0, 1 / 2),
    # tie-break of the LCS walk: "King Stephen" vs "Stephen King" gives {King} (step in the prediction on
    # ties), then "Stephen" adds {Stephen}: 2/2. Stepping in the reference instead would give {Stephen}: 1/2
    ("King Stephen. Stephen", "Stephen King", 1.0, 1 / 2),
    # a blank sentence between dots is the one word '': reference {Paris, '', London} (3) -> 1/3; rouge_score 1/2
    ("Paris", "Paris. . London", 1 / 3, 1 / 2),
    # an empty (after strip) prediction is "NOANSWER", as RWKU substitutes
    ("   ", "NOANSWER", 1.0, 1.0),
    ("", "Paris", 0.0, 0.0),
]


@pytest.mark.parametrize(("prediction", "reference", "rwku_recall", "rouge_score_recall"), CASES)
def test_hand_derived_cases(prediction, reference, rwku_recall, rouge_score_recall):
    assert rouge_l_recall_rwku(prediction, reference) == pytest.approx(rwku_recall, abs=1e-15)
    assert rwku.rouge_recall(prediction, reference) == pytest.approx(rwku_recall, abs=1e-15)
    assert rwku.rouge_recall(prediction, reference, "rouge_score") == pytest.approx(rouge_score_recall, abs=1e-15)
    # and the package RWKU imports agrees (after RWKU's own NOANSWER substitution)
    package = Rouge().get_scores(prediction.strip() or "NOANSWER", reference)[0]["rouge-l"]["r"]
    assert package == pytest.approx(rwku_recall, abs=1e-15)


def test_edge_cases():
    # only dots: no sentence; the package raises (and RWKU's evaluation stops), we score 0
    with pytest.raises(ValueError, match="Hypothesis is empty"):
        Rouge().get_scores("...", "Paris")
    assert rouge_l_recall_rwku("...", "Paris") == 0.0
    with pytest.raises(ValueError, match="has no words"):
        rouge_l_recall_rwku("Paris", "..")
    # long texts: the package's recursive LCS walk would hit Python's recursion limit; ours is iterative
    long = " ".join(f"w{i}" for i in range(3000))
    assert rouge_l_recall_rwku(long, long) == 1.0
    with pytest.raises(ValueError, match="RWKU ROUGE must be one of rwku, rouge_score"):
        rwku.rouge_recall("a", "a", "rougeL")


WORDS = ["Paris", "paris", "Maine", "Maine,", "King", "Stephen", "the", "a", "b", "", ".", "..", "New", "York,"]
texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join) | st.text(" .abAB,\n", max_size=20)


@settings(max_examples=400, deadline=None)
@given(prediction=texts, reference=texts)
def test_equals_the_rouge_package(prediction, reference):
    hyp = prediction.strip() or "NOANSWER"  # RWKU's substitution before it calls the package
    package = Rouge(metrics=["rouge-l"])
    if not any(s for s in reference.split(".")):  # the package's sentences: pieces between dots, non-empty
        with pytest.raises(ValueError):
            package.get_scores(hyp, reference)
        with pytest.raises(ValueError, match="has no words"):
            rouge_l_recall_rwku(prediction, reference)
    elif not any(s for s in hyp.split(".")):
        with pytest.raises(ValueError):
            package.get_scores(hyp, reference)
        assert rouge_l_recall_rwku(prediction, reference) == 0.0
    else:
        assert rouge_l_recall_rwku(prediction, reference) == package.get_scores(hyp, reference)[0]["rouge-l"]["r"]


def test_evaluate_probes_scores_with_rwku_by_default(monkeypatch):
    tok = tiny_tokenizer()
    rows = [{"query": "Q1 ___", "answer": "Carrie", "level": "1"},
            {"query": "Q2 ___", "answer": "Portland, Maine", "level": "1"}]
    generations = ["carrie", "Portland Maine"]  # RWKU: 0 and 1/2 ("Portland," != "Portland"); rouge_score: 1, 1
    monkeypatch.setattr(rwku, "generate", lambda *a, **k: list(generations))
    fmt = Formatter(tok, "off")
    got = rwku.evaluate_probes(None, tok, fmt, rows, "forget_level1", 2, 3)
    assert [v["rougeL_recall"] for v in got["value_by_index"].values()] == [0.0, 0.5]
    assert got["agg_value"] == pytest.approx(0.25, abs=1e-15)
    other = rwku.evaluate_probes(None, tok, fmt, rows, "forget_level1", 2, 3, rouge="rouge_score")
    assert other["agg_value"] == pytest.approx(1.0, abs=1e-15)


def test_evaluate_rwku_rejects_an_unknown_rouge():
    with pytest.raises(ValueError, match="RWKU ROUGE must be one of"):
        rwku.evaluate_rwku(None, None, None, {}, rouge="rouge-l")


def test_probe_prompts_are_rwkus():
    # eval_forget.py: "affirmative suffix" has no trailing newline and no "Answer:"; "incontext learning"
    # has no "Question: "; the other level-3 types use the QA prompt
    assert rwku.probe_prompt({"query": "Q", "type": "affirmative suffix"}, "forget_level3") == (
        "Please briefly answer the following question.\nQuestion: Q", "")
    assert rwku.probe_prompt({"query": "Question: A?\nAnswer: B\nQuestion: C?", "type": "incontext learning"},
                             "forget_level3") == (
        "Please briefly answer the following question.\nQuestion: A?\nAnswer: B\nQuestion: C?\n", "Answer:")
    assert rwku.probe_prompt({"query": "Q", "type": "role playing"}, "forget_level3") == (
        "Please briefly answer the following question.\nQuestion: Q\n", "Answer:")
    assert rwku.probe_prompt({"query": "Q ___"}, "neighbor_level1") == (
        "Please complete the blank in the following question.\nQuestion: Q ___\n", "Answer:")


# --------------------------------------------------------------------------- Min-K%++ moments


def reference_moments(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = logits.astype(np.float64)
    lp = x - logsumexp(x, axis=1, keepdims=True)
    p = np.exp(lp)
    mu = (p * lp).sum(axis=1)
    return mu, np.sqrt((p * lp * lp).sum(axis=1) - mu * mu)


def test_moments_are_float64():
    """Against a float64 numpy reference: rounding in V-term sums is ~sqrt(V)·eps relative for μ, times
    E[(log p)²]/σ² (≈ 11 here) for σ² after the cancellation: sqrt(32000)·2.2e-16·11 ≈ 4e-13 < 1e-12.
    float32 (eps 1.2e-7) misses by > 1e-7, so the tolerance separates the two."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 32000, generator=g) * 3
    mu, sigma = logprob_moments(logits, rows=16)  # several row blocks
    assert mu.dtype == sigma.dtype == torch.float64
    want_mu, want_sigma = reference_moments(logits.numpy())
    np.testing.assert_allclose(mu.numpy(), want_mu, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sigma.numpy(), want_sigma, rtol=1e-12, atol=0)
    lp32 = torch.log_softmax(logits, -1)
    mu32 = (lp32.exp() * lp32).sum(-1).numpy()
    assert np.max(np.abs(mu32 - want_mu) / np.abs(want_mu)) > 1e-7
    # bf16 logits: the moments of exactly those values, still in float64
    half = logits[:4].bfloat16()
    mu_h, sigma_h = logprob_moments(half)
    want_mu, want_sigma = reference_moments(half.float().numpy())
    np.testing.assert_allclose(mu_h.numpy(), want_mu, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sigma_h.numpy(), want_sigma, rtol=1e-12, atol=0)
    empty_mu, empty_sigma = logprob_moments(logits[:0])
    assert empty_mu.shape == empty_sigma.shape == (0,) and empty_mu.dtype == torch.float64


def test_row_tokens_and_rwku_mia_keep_float64_moments(tmp_path):
    path = save_tiny_model(tmp_path / "m")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    fmt = Formatter(tok, "off", max_length=64)
    data = load_rwku_sets(str(RWKU_DIR), k=1)
    enc = [fmt.text(r["text"], eos=False) for r in data.eval_sets["mia_forget"]]
    toks = row_tokens(model, enc, tok.pad_token_id, batch_size=2, moments=True)
    assert all(m.dtype == np.float64 and s.dtype == np.float64 for m, s in zip(toks.mu, toks.sigma))
    assert all(n.dtype == np.float32 for n in toks.nll)
    with torch.no_grad():
        ids = torch.tensor([enc[0]["input_ids"]])
        logits = model(ids).logits[0, :-1]
    keep = torch.tensor(enc[0]["labels"][1:]) != -100
    want_mu, _ = reference_moments(logits[keep].numpy())
    # the chunked path's own matmul differs from the model's by float32 rounding (~1e-7 relative)
    np.testing.assert_allclose(toks.mu[0], want_mu, rtol=1e-5)
