"""The original TOFU logs through the command line: ``eval --logs`` re-scores a published log without a
model; ``--benchmark.ds_size`` evaluates the rows the release did, and forget quality refuses retain
logs of other rows with one line (before any model is loaded); RWKU's ROUGE choice reaches its scorer. The logs
and the TOFU data come from ``ATWU_TEST_DATA`` (tests/fixtures/real_data.py): skipped without them."""

import json
from pathlib import Path

import pytest
from fixtures.real_data import require_real_tofu, require_tofu_logs, tofu_dir, tofu_logs_dir
from fixtures.tiny import RWKU_DIR, save_tiny_model
from scipy import stats

import atwu_fast.suites.rwku.suite as rwku_suite
from atwu_fast.eval.__main__ import main as eval_main
from atwu_fast.suites.tofu.original_logs import load_reference, read_original_logs, score_original

pytestmark = pytest.mark.slow

LOGS, TOFU = tofu_logs_dir(), tofu_dir()  # paths only: the tests that read them call require_*() first
FULL, RETAIN90 = LOGS / "ft_epoch5_lr1e-05_llama2-7b_full_wd0", LOGS / "ft_epoch5_lr1e-05_llama2-7b_retain90_wd0"


@pytest.mark.parametrize("model, lr, fq, mu", [("llama2-7b", "1e-05", "1.10e-19", "0.6268"),
                                                ("phi", "2e-05", "5.10e-17", "0.5216")])
def test_the_numbers_docs_quote_for_the_published_logs(model, lr, fq, mu):
    """docs/benchmarks.md quotes forget quality and model utility of full vs retain90 (weight decay 0)."""
    require_tofu_logs()
    full, retain = (LOGS / f"ft_epoch5_lr{lr}_{model}_{split}_wd0" for split in ("full", "retain90"))
    scores = score_original(read_original_logs(full), load_reference(retain))
    assert (f"{scores['forget_quality']:.2e}", f"{scores['model_utility']:.4f}") == (fq, mu)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    assert f"{fq}, {'model utility ' if model != 'phi' else ''}{mu}" in " ".join(doc.split())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tofu-logs") / "model")


def test_eval_logs_rescores_a_published_log_without_a_model(tmp_path, capsys):
    require_tofu_logs()
    assert eval_main(["--logs", str(FULL), "--retain-logs", str(RETAIN90), "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "TOFU_SUMMARY.json").read_text())
    expected = score_original(read_original_logs(FULL), load_reference(RETAIN90))
    assert summary["forget_quality"] == pytest.approx(expected["forget_quality"], rel=1e-12)
    assert summary["model_utility"] == pytest.approx(expected["model_utility"], rel=1e-12)
    # the values the original aggregate_eval_stat.py formulas give (tests/suites/test_tofu_original_logs.py derives them)
    assert summary["forget_quality"] == pytest.approx(1.0966e-19, rel=1e-4)
    assert summary["model_utility"] == pytest.approx(0.62678, rel=1e-4)
    assert "(Model Utility)" in printed and "(Forget Quality)" in printed


def test_eval_logs_refuses_a_retain_log_of_other_rows(tmp_path, capsys):
    require_tofu_logs()
    other = LOGS / "ft_epoch5_lr1e-05_llama2-7b_retain95_wd0"  # evaluated on forget05's rows
    with pytest.raises(SystemExit) as exc:
        eval_main(["--logs", str(FULL), "--retain-logs", str(other), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "forget rows" in err


def test_ds_size_and_the_forget_row_check(model_dir, tmp_path, capsys):
    require_real_tofu()
    require_tofu_logs()
    args = ["--benchmark", "tofu", "--split", "forget10", "--data-dir", str(TOFU), "--model", str(model_dir),
            "--retain-logs", str(RETAIN90), "--benchmark.max_new_tokens", "1", "--benchmark.eval_batch_size", "64"]
    with pytest.raises(SystemExit) as exc:  # all 400 forget10 rows against logs of the first 300
        eval_main(args + ["--output-dir", str(tmp_path / "all")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "hold 300 forget rows but 400 were evaluated" in err and "\n" not in err
    assert not (tmp_path / "all").exists()
    assert eval_main(args + ["--benchmark.ds_size", "300", "--output-dir", str(tmp_path / "300")]) == 0
    logs = json.loads((tmp_path / "300" / "TOFU_EVAL.json").read_text())
    assert len(logs["forget_truth_ratio"]["value_by_index"]) == 300
    # forget quality is the KS p-value of this model's 300 forget truth ratios against the retain log's 300
    # (the same float64 values: JSON round-trips them exactly, so only scipy's own arithmetic may differ;
    # abs=0: the p-value of a tiny model against a 7B retain model is ~1e-65, far below approx's default abs)
    retain_r = load_reference(RETAIN90).forget_truth_ratio
    assert len(retain_r) == 300
    rows = logs["forget_truth_ratio"]["value_by_index"]
    expected = stats.ks_2samp([rows[k]["score"] for k in sorted(rows, key=int)], retain_r).pvalue
    assert logs["forget_quality"]["agg_value"] == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("choice", ["rwku", "rouge_score"])
def test_rwku_rouge_choice_reaches_the_scorer(model_dir, tmp_path, monkeypatch, choice):
    seen = {}
    real = rwku_suite.evaluate_rwku

    def spy(*args, **kwargs):
        seen["rouge"] = kwargs.get("rouge")
        return real(*args, **kwargs)

    monkeypatch.setattr(rwku_suite, "evaluate_rwku", spy)
    extra = [] if choice == "rwku" else ["--rwku.rouge", choice]
    assert eval_main(["--benchmark", "rwku", "--targets", "1", "--model", str(model_dir), "--data-dir", str(RWKU_DIR),
                      "--benchmark.max_new_tokens", "2", "--output-dir", str(tmp_path), *extra]) == 0
    assert seen["rouge"] == choice
