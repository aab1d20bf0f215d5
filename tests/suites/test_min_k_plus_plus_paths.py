"""TOFU's and RWKU's Min-K%++ on a sharpened model (every next-token variance below 1e-6) equal the single
moments function (scoring.logprob_moments, σ_t clamped at 1e-3) on the same tokens."""

import numpy as np
import pytest
import torch
from fixtures.tiny import RWKU_DIR, TOFU_DIR, save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from atwu_fast.data.formatting import Formatter
from atwu_fast.eval import metrics
from atwu_fast.eval.scoring import logprob_moments
from atwu_fast.suites.rwku import evaluate as rwku
from atwu_fast.suites.rwku.suite import load_rwku_sets
from atwu_fast.suites.tofu.evaluate import TofuScorer, mia_scores
from atwu_fast.suites.tofu.suite import load_tofu_sets


@pytest.fixture(scope="module")
def sharpened(tmp_path_factory):
    """The tiny model with its final norm's weight set to 300: logits ×~300 (|logit| ≈ 240), so the
    next-token distribution is near one-hot and Var_p[log p] < 1e-6 at every position."""
    path = save_tiny_model(tmp_path_factory.mktemp("sharp") / "model")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.fill_(300.0)
    return model, tok


def reference_min_k_pp(model, row: dict, k: float, drop_last: bool) -> float:
    """Min-K%++ of one encoded row from the model's full forward and the single moments function."""
    with torch.no_grad():
        logits = model(torch.tensor([row["input_ids"]])).logits[0, :-1]
    labels = torch.tensor(row["labels"][1:])
    keep = labels != -100
    logits, labels = logits[keep], labels[keep]
    if drop_last:
        logits, labels = logits[:-1], labels[:-1]
    mu, sigma = logprob_moments(logits)
    # the sharpened case: every variance is below the clamp, so σ_t = 1e-3 (our old floor was 1e-12)
    np.testing.assert_allclose(sigma.numpy(), 1e-3, rtol=1e-12)
    lp = torch.log_softmax(logits.double(), -1).gather(1, labels[:, None])[:, 0]
    return float(metrics.mia_min_k_plus_plus([lp.numpy()], [mu.numpy()], [sigma.numpy()], k)[0])


def test_rwku_min_k_plus_plus_uses_the_single_moments(sharpened):
    model, tok = sharpened
    fmt = Formatter(tok, "off", max_length=64)
    rows = load_rwku_sets(str(RWKU_DIR), k=1).eval_sets["mia_forget"]
    got = rwku.mia_set(model, tok, fmt, rows, batch_size=2, k=0.2)["min_k_plus_plus"]
    want = [reference_min_k_pp(model, fmt.text(r["text"], eos=False), 0.2, drop_last=False) for r in rows]
    assert min(want) > 1e3  # targets the model does not predict: |log p − μ| / 1e-3 is large
    # the chunked LM head and the full forward differ by float32 rounding of |logit| ≈ 240 logits
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_tofu_min_k_plus_plus_uses_the_single_moments(sharpened):
    model, tok = sharpened
    fmt = Formatter(tok, "off", max_length=128)
    rows = load_tofu_sets(str(TOFU_DIR), "forget01").eval_sets["forget"][:3]
    s = TofuScorer(model, tok, fmt, batch_size=2)
    pairs = [(r["question"], r["answer"]) for r in rows]
    toks = s.tokens(pairs, moments=True)
    got = mia_scores(toks, [r["answer"] for r in rows], k=0.4)["mia_min_k_plus_plus"]
    want = [reference_min_k_pp(model, fmt.qa(q, a), 0.4, drop_last=True) for q, a in pairs]
    assert min(want) > 1e3
    np.testing.assert_allclose(got, want, rtol=1e-4)
