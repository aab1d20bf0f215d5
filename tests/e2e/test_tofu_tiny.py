"""TOFU's whole protocol at laptop scale (``--benchmark tofu --model tiny``) on the real TOFU data, reduced
to CI size: two tiny models fine-tuned (cached), unlearning, the TOFU evaluation with forget quality
against the local retain model, span alignment against the split's target words. The real TOFU data comes
from ``ATWU_TEST_DATA`` (tests/fixtures/real_data.py): without it these tests are skipped."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures.real_data import require_real_tofu, tofu_dir
from safetensors.torch import load_file
from scipy import stats
from sklearn.metrics import roc_auc_score

from atwu_fast.suites.tofu.tiny import AUTHOR_ROWS, author_subset, tofu_schedule, underfit_note
from atwu_fast.unlearn.__main__ import main

TOFU = tofu_dir()  # a path only: the tests that read it call require_real_tofu() first
METHODS = ["grad_diff", "npo", "atwu_logfit", "atwu_oracle", "wga"]
REDUCED = ["--benchmark", "tofu", "--benchmark.data_dir", str(TOFU), "--model", "tiny", "--split", "forget01",
           "--tiny.vocab_size", "400", "--tiny.model.hidden_size", "32", "--tiny.model.intermediate_size", "64",
           "--tiny.model.num_layers", "1", "--tiny.finetune.max_steps", "40", "--tiny.finetune.min_steps", "0",
           "--tiny.finetune.lr", "1e-2", "--train.steps", "4", "--train.forget_batch_size", "8",
           "--train.retain_batch_size", "8", "--benchmark.max_new_tokens", "4", "--benchmark.ds_size", "40",
           "--tofu.generate", "false",  # 40 fine-tuning steps make no sentence: a ROUGE of 0 would zero MU
           "--threads", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_real_tofu()
    root = tmp_path_factory.mktemp("tofu-tiny")
    assert main(REDUCED + ["--methods", ",".join(METHODS), "--output-dir", str(root / "a"),
                           "--cache-dir", str(root / "cache")]) == 0
    return root


def ratios(eval_json: Path) -> np.ndarray:
    rows = json.loads(eval_json.read_text())["forget_truth_ratio"]["value_by_index"]
    return np.array([rows[k]["score"] for k in sorted(rows, key=int)])


def token_score_auroc(method_dir: Path, key: str | None = None) -> float:
    doc = json.loads((method_dir / "token_scores.json").read_text())
    key = key or doc["score_key"]
    scores = [s for row in doc["rows"] for s in row[key]]
    return roc_auc_score([int(k == 2) for row in doc["rows"] for k in row["span_kind"]], scores)


@pytest.mark.slow
def test_results_have_forget_quality_against_the_local_retain_model_utility_and_span_auroc(run):
    out = run / "a"
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((out / "reference.json").read_text())
    assert set(results) == set(METHODS)
    assert list(reference["models"]) == ["retain model", "target model"]  # the retain model first: the reference
    assert reference["models"]["retain model"]["forget_quality"] == 1.0
    retain_r = ratios(out / "reference" / "retain model" / "TOFU_EVAL.json")
    assert np.allclose(retain_r, reference["retain_forget_truth_ratios"], rtol=1e-12)
    assert len(retain_r) == 40  # forget01: 2 authors
    for name in ["target model", *METHODS]:
        metrics = results.get(name) or reference["models"][name]
        logs = out / (name if name in results else f"reference/{name}") / "TOFU_EVAL.json"
        # forget quality is the KS p-value of this model's forget truth ratios against the local retain model's
        # abs=0: a p-value can be far below approx's default absolute tolerance of 1e-12
        assert metrics["forget_quality"] == pytest.approx(stats.ks_2samp(ratios(logs), retain_r).pvalue, rel=1e-9,
                                                          abs=0)
        assert 0 < metrics["model_utility"] <= 1
    # What a method that does nothing (its model = the target) would fail, against the same run's target row:
    target = reference["models"]["target model"]
    (target_file,) = (run / "cache").glob("*target-*/model.safetensors")
    start = load_file(str(target_file))
    for name in METHODS:
        weights = load_file(str(out / name / "model" / "model.safetensors"))
        lr = yaml.safe_load((out / name / "config.yaml").read_text())["train"]["lr"]  # each method's tuned lr
        moved = max((weights[k].float() - start[k].float()).abs().max().item() for k in start)
        # AdamW's first step moves every weight with a gradient by lr·g/(|g| + ε) ≈ ±lr, so after 4 steps some
        # weight whose gradient kept its sign sits ≈ 4·lr from the target (measured: 4.01·lr); doing nothing: 0
        assert moved >= lr, (name, moved, lr)
        # the forget answers look less like training data: the loss-based membership AUC (forget vs holdout
        # rows) fell below the target's (the evaluation is deterministic: an unchanged model gives it exactly)
        assert results[name]["mia_loss"] < target["mia_loss"], (name, results[name]["mia_loss"], target["mia_loss"])
    # NPO's forget term dominates at its tuned lr: the forget answers lost probability outright, and against
    # the retain answers; the others' retain terms lift both on these under-fit models (answer NLL ≈ 4.9)
    npo = results["npo"]
    assert npo["forget_Q_A_Prob"] < target["forget_Q_A_Prob"]
    assert npo["forget_Q_A_Prob"] / npo["retain_Q_A_Prob"] < target["forget_Q_A_Prob"] / target["retain_Q_A_Prob"]
    for name in METHODS:  # the target words mark the forget answers: every method has a span AUROC
        span = results[name]["span_auroc"]
        assert span is not None and 0 <= span <= 1
        # the file keeps 6 significant digits, so only pairs closer than that may tie differently
        assert span == pytest.approx(token_score_auroc(out / name), abs=5e-3), name
        assert results[name]["span_auroc_delta"] == pytest.approx(token_score_auroc(out / name, "nll_delta"), abs=5e-3)
        # an unchanged model's NLL deltas are all 0 (an AUROC of 0.5 from ties alone)
        rows = json.loads((out / name / "token_scores.json").read_text())["rows"]
        assert any(d != 0 for row in rows for d in row["nll_delta"]), name
    # the oracle pushes only on the author-unique span tokens: their NLL rose more than the other tokens'
    assert results["atwu_oracle"]["span_auroc_delta"] > 0.5


@pytest.mark.slow
def test_the_models_learn_the_author_subset_and_are_cached(run, capsys):
    caches = sorted(p.name for p in (run / "cache").iterdir())
    assert [c.split("-")[1] for c in caches] == ["retain", "target", "tokenizer"]
    target = json.loads((run / "cache" / caches[1] / "finetune_summary.json").read_text())
    retain = json.loads((run / "cache" / caches[0] / "finetune_summary.json").read_text())
    # 21 retain_perturbed authors x 20 rows + 100 real authors + 117 world facts; the target adds forget01's 40
    assert (retain["rows"], target["rows"]) == (21 * 20 + 217, 21 * 20 + 217 + 40)
    capsys.readouterr()
    assert main(REDUCED + ["--method", "grad_diff", "--output-dir", str(run / "b"), "--cache-dir",
                           str(run / "cache")]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning the tiny" not in out  # both models came from the cache
    # 40 steps leave both models far above 4 x the 0.05 target loss: a cached pair still says it under-fits
    assert out.count("stopped at the 40-step cap") == 2
    first = json.loads((run / "a" / "results.json").read_text())["grad_diff"]
    again = json.loads((run / "b" / "results.json").read_text())["grad_diff"]
    assert again["forget_quality"] == first["forget_quality"]


@pytest.mark.slow
def test_pairs_study_records_each_seeds_fine_tuning_and_reference_metrics(run, tmp_path):
    """``python -m studies.tofu_pairs`` on the fixture's cached seed-0 pair: its line holds the cached
    fine-tuning summaries and the reference metrics of a run on that pair (the fixture's, same models)."""
    from studies import tofu_pairs

    caches = {p.name.split("-")[1]: p for p in (run / "cache").iterdir()}
    assert tofu_pairs.main(["--tofu-dir", str(TOFU), "--cache-dir", str(run / "cache"), "--seeds", "0",
                            "--output-dir", str(tmp_path), "--cap", "40", "--", *REDUCED[6:]]) == 0
    record = json.loads((tmp_path / "tofu_pairs" / "pairs.jsonl").read_text())
    reference = json.loads((run / "a" / "reference.json").read_text())["models"]
    for kind in ("target", "retain"):
        summary = json.loads((caches[kind] / "finetune_summary.json").read_text())
        assert (record[kind]["steps"], record[kind]["final_nll"]) == (40, summary["final_nll"])
        # the same evaluation of the same models in another process: equal up to summation order
        assert record[kind]["model_utility"] == pytest.approx(reference[f"{kind} model"]["model_utility"], rel=1e-9)
    assert record["target"]["log10_fq"] == pytest.approx(np.log10(reference["target model"]["forget_quality"]),
                                                         abs=1e-9)
    table = (tmp_path / "tofu_pairs" / "pairs.md").read_text()
    assert f"| 0 | 40 | {record['target']['final_nll']:.4f} |" in table
    assert "models stopped by the 40-step cap: 2 of 2" in table


def test_underfit_note_flags_a_capped_model_far_above_the_target_loss():
    schedule = tofu_schedule()  # target loss 0.05: flagged above 4 x 0.05 when stopped by the cap
    cap = schedule.max_steps
    assert underfit_note("retain", {"steps": cap, "final_nll": 0.80}, schedule).startswith(
        f"warning: the tiny TOFU retain model stopped at the {cap}-step cap with answer NLL 0.80")
    assert underfit_note("target", {"steps": cap, "final_nll": 0.10}, schedule) is None  # near the aim
    assert underfit_note("target", {"steps": cap - 1, "final_nll": 0.80}, schedule) is None  # stopped by the loss
    assert underfit_note("target", {"steps": cap, "final_nll": 0.80}, replace(schedule, target_loss=0.0)) is None


def test_author_subset_takes_every_retain_eval_author_then_the_first_others():
    retain = [{"question": f"q{i}"} for i in range(5 * AUTHOR_ROWS)]
    evaluated = [retain[3], retain[AUTHOR_ROWS * 3 + 7]]  # rows of authors 0 and 3
    assert author_subset(retain, evaluated, 0) == [0, 3]
    assert author_subset(retain, evaluated, 2) == [0, 1, 2, 3]
    assert author_subset(retain, evaluated, 9) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="not a retain row"):
        author_subset(retain, [{"question": "elsewhere"}], 0)


def test_real_tofu_retain_perturbed_spans_21_authors():
    """TOFU's retain_perturbed holds 20 authors' rows, one of author 5 swapped for one of author 22."""
    tofu = require_real_tofu()

    def rows(config):
        return [json.loads(line) for line in (tofu / f"{config}.json").read_text().splitlines() if line.strip()]

    assert author_subset(rows("retain90"), rows("retain_perturbed"), 0) == [*range(20), 22]


@pytest.mark.parametrize("extra", [["--benchmark", "rwku"], ["--retain-logs", "x.json"]])
def test_tiny_is_only_for_tofu_without_retain_logs(extra, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--benchmark", "tofu", "--model", "tiny", *extra, "--output-dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model tiny" in err
    assert not (tmp_path / "o").exists()
