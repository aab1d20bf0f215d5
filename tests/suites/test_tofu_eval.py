"""TOFU metric plumbing on hand-computed cases, the batched model-side ops, and the log layout."""

import json
import math

import numpy as np
import pytest
import torch
from fixtures.tiny import FIXTURES, TOFU_DIR, save_tiny_model
from scipy import stats
from transformers import AutoModelForCausalLM, AutoTokenizer

from atwu_fast.data.formatting import Formatter
from atwu_fast.eval import metrics
from atwu_fast.eval.logs import load_logs, save_logs, summarize
from atwu_fast.eval.scoring import RowTokens, row_tokens
from atwu_fast.suites.tofu.evaluate import (
    MIA_KEYS,
    UTILITY_KEYS,
    evaluate_tofu,
    mia_scores,
    prob_entry,
    truth_ratio_entry,
)
from atwu_fast.suites.tofu.original_logs import load_reference
from atwu_fast.suites.tofu.suite import load_tofu_sets

REF_LOGS = FIXTURES / "tofu_retain_logs" / "TOFU_EVAL.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_prob_entry_by_hand():
    e = prob_entry(np.array([0.0, math.log(2)]))
    assert e["agg_value"] == pytest.approx(0.75)
    assert e["value_by_index"]["1"] == {"prob": pytest.approx(0.5), "avg_loss": pytest.approx(math.log(2))}
    lists = prob_entry(np.array([[0.0, math.log(4)]]))  # perturbed alternatives stay lists
    assert lists["value_by_index"]["0"]["prob"] == pytest.approx([1.0, 0.25])
    assert lists["agg_value"] == pytest.approx(0.625)


def test_truth_ratio_entry_by_hand():
    # correct P = 1/2, perturbed P = 1/4 and 1/16 -> geometric mean 1/8 -> R = 1/4
    para, pert = np.array([math.log(2)]), np.array([[math.log(4), math.log(16)]])
    forget, r = truth_ratio_entry(para, pert, "closer_to_1_better")
    assert r[0] == pytest.approx(0.25) and forget["value_by_index"]["0"]["score"] == pytest.approx(0.25)
    assert forget["agg_value"] == pytest.approx(0.25)  # min(1/4, 4)
    other, _ = truth_ratio_entry(para, pert, "true_better")
    assert other["agg_value"] == pytest.approx(0.75)  # max(0, 1 - 1/4)


def test_mia_scores_drop_the_eos_token_for_min_k():
    nll = [np.array([1.0, 3.0, 2.0, 0.5])]  # last token = eos
    toks = RowTokens(nll=nll, labels=[np.arange(4)], mu=[np.array([-1.0, -1.0, -1.0, -9.0])],
                     sigma=[np.array([1.0, 2.0, 1.0, 9.0])])
    s = mia_scores(toks, ["abcd"], k=0.4)
    assert s["mia_loss"][0] == pytest.approx(1.625)  # eos included
    assert s["mia_min_k"][0] == pytest.approx(3.0)  # lowest 1 of [-1, -3, -2]
    # z = (lp - mu) / sigma over the first three: [0, -1, -1] -> lowest one -1 -> score 1
    assert s["mia_min_k_plus_plus"][0] == pytest.approx(1.0)
    assert s["mia_zlib"][0] == pytest.approx(1.625 / len(__import__("zlib").compress(b"abcd")))


def test_row_tokens_match_full_logits(tiny):
    model, tok = tiny
    fmt = Formatter(tok, "off", max_length=128)
    rows = [fmt.qa("What is the capital of France?", "Paris"), fmt.qa("Who wrote '1984'?", "George Orwell wrote it.")]
    got = row_tokens(model, rows, tok.pad_token_id, batch_size=2, argmax=True, moments=True, chunk_size=3)
    for i, row in enumerate(rows):
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double()
        labels = torch.tensor(row["labels"][1:])
        keep = labels != -100
        lp = torch.log_softmax(logits[keep], -1)
        nll = -lp.gather(1, labels[keep][:, None])[:, 0]
        np.testing.assert_allclose(got.nll[i], nll.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got.argmax[i], logits[keep].argmax(-1).numpy())
        mu = (lp.exp() * lp).sum(-1)
        sigma = ((lp.exp() * lp * lp).sum(-1) - mu**2).sqrt()
        np.testing.assert_allclose(got.mu[i], mu.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.sigma[i], sigma.numpy(), rtol=1e-3, atol=1e-4)
        assert got.labels[i][-1] == tok.eos_token_id


def test_reference_layout_round_trip(tmp_path):
    ref = json.loads(REF_LOGS.read_text())
    eval_path, summary_path = save_logs(tmp_path, ref)
    assert load_logs(tmp_path) == ref == load_logs(eval_path)
    summary = json.loads(summary_path.read_text())
    assert summary == {"forget_Q_A_Prob": 0.25, "forget_truth_ratio": 0.6666666666, "mia_min_k": 0.4,
                       "model_utility": 0.61}  # None agg values are left out
    assert list(summary) == sorted(summary)
    reference = load_reference(REF_LOGS.parent)
    np.testing.assert_array_equal(reference.forget_truth_ratio, [0.5, 2.0, 0.8, 1.25])
    assert reference.mia_min_k_auc == 0.4


def test_evaluate_tofu_end_to_end(tiny):
    model, tok = tiny
    data = load_tofu_sets(str(TOFU_DIR), "forget10", str(TOFU_DIR / "forget10_target_words.json"))
    ref = load_reference(REF_LOGS)
    fmt = Formatter(tok, "off", max_length=128)
    logs = evaluate_tofu(model, tok, fmt, data.eval_sets, batch_size=3, max_new_tokens=4, retain_ref=ref)
    for key in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "forget_quality", "model_utility",
                "privleak", "extraction_strength", "exact_memorization", *MIA_KEYS, *UTILITY_KEYS, "span_auroc_nll"):
        assert key in logs, key
    assert set(logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]) == {
        "rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"}
    r = np.array([logs["forget_truth_ratio"]["value_by_index"][str(i)]["score"] for i in range(4)])
    assert logs["forget_quality"]["agg_value"] == pytest.approx(stats.ks_2samp(r, [0.5, 2.0, 0.8, 1.25]).pvalue)
    auc = logs["mia_min_k"]["agg_value"]
    assert logs["privleak"]["agg_value"] == pytest.approx(((1 - auc) - 0.6) / 0.6 * 100)
    assert logs["model_utility"]["agg_value"] == pytest.approx(
        stats.hmean([logs[k]["agg_value"] for k in UTILITY_KEYS]))
    probs = [logs["forget_Q_A_Prob"]["value_by_index"][str(i)]["prob"] for i in range(4)]
    assert logs["forget_Q_A_Prob"]["agg_value"] == pytest.approx(np.mean(probs))
    norm = logs["ra_Q_A_Prob_normalised"]["value_by_index"]["0"]["prob"]
    ans = logs["ra_Q_A_Prob"]["value_by_index"]["0"]["prob"]
    pert = logs["ra_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]
    assert norm == pytest.approx(ans / (ans + sum(pert)))
    assert 0 < summarize(logs)["extraction_strength"] <= 1
    assert all(len(v["forget"]["value_by_index"]) == 4 for k, v in logs.items() if k in MIA_KEYS)
    assert metrics.mia_auc(
        [v["score"] for v in logs["mia_loss"]["forget"]["value_by_index"].values()],
        [v["score"] for v in logs["mia_loss"]["holdout"]["value_by_index"].values()]) == logs["mia_loss"]["auc"]
