"""The original TOFU release's published logs: every layout loads, re-scoring matches the original
script's formulas (computed here independently, plainly, from the raw JSON), row checks refuse logs of
other rows, and anything that is not a harness log is a one-line error. The logs and the TOFU data come from
``ATWU_TEST_DATA`` (tests/fixtures/real_data.py): a test that reads them is skipped without them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.real_data import require_real_tofu, require_tofu_logs, tofu_logs_dir
from scipy import stats

from atwu_fast.suites.tofu.original_logs import (
    ORIGINAL_COLUMNS,
    LogFormatError,
    check_forget_rows,
    limit_rows,
    load_reference,
    read_original_logs,
    rescore,
    score_original,
    template_questions,
)
from atwu_fast.suites.tofu.suite import load_tofu_sets

FIXTURE_REF = Path(__file__).resolve().parents[1] / "fixtures" / "tofu_retain_logs" / "TOFU_EVAL.json"
MODELS = {"llama2-7b": "ft_epoch5_lr1e-05_llama2-7b", "phi-1.5": "ft_epoch5_lr2e-05_phi"}
# one placeholder where the logs are missing, so that the test runs and says so (skips, or fails under CI)
RUNS = sorted(p.name for p in tofu_logs_dir().glob("ft_epoch5_*")) or ["no-logs"]
FILES = {"retain": "eval_log.json", "real_authors": "eval_real_author_wo_options.json",
         "world_facts": "eval_real_world_wo_options.json", "forget": "eval_log_forget.json"}
# float64 arithmetic on identical inputs; only summation order and 1/x vs x differ (~1e-16 relative)
RTOL = 1e-12


def run_dir(model: str, split: str, wd: str = "0") -> Path:
    """A published run's folder; skips the test (fails it under CI) where the logs are missing."""
    return require_tofu_logs() / f"{MODELS[model]}_{split}_wd{wd}"


# --------------------------------------------------------------------------- an independent computation


def plain_scores(run: Path, retain_run: Path | None = None, arithmetic: bool = False) -> dict:
    """aggregate_eval_stat.py's numbers, written out plainly from eval_log_aggregated.json.

    Values are taken in file order (as the script's ``list(d.values())``). Prob reads avg_gt_loss,
    the truth ratio avg_paraphrased_loss / average_perturb_loss; ``arithmetic`` averages the perturbed
    probabilities instead of the losses (the same release's utils.get_model_utility)."""
    logs = json.loads((run / "eval_log_aggregated.json").read_text())

    def col(name, key):
        return np.array(list(logs[FILES[name]][key].values()), dtype=float)

    def stat(name):  # the script's curr_stat_1 = correct / perturbed
        para, pert = col(name, "avg_paraphrased_loss"), col(name, "average_perturb_loss")
        if arithmetic:
            return np.exp(-para) / np.exp(-pert).mean(axis=1)
        return np.exp(pert.mean(axis=1) - para)

    out = {}
    for name, short in (("retain", "Retain"), ("real_authors", "Real Authors"), ("world_facts", "Real World"),
                        ("forget", "Forget")):
        true_p = np.exp(-col(name, "avg_gt_loss"))
        if name in ("retain", "forget"):
            out[f"Prob. {short}"] = true_p.mean()
        else:
            false_p = np.exp(-col(name, "average_perturb_loss"))
            out[f"Prob. {short}"] = np.mean(true_p / (true_p + false_p.sum(axis=1)))
        out[f"ROUGE {short}"] = col(name, "rougeL_recall").mean()
        s = stat(name)
        out[f"Truth Ratio {short}"] = (np.mean(np.minimum(s, 1 / s)) if name == "forget"
                                       else np.mean(np.maximum(0, 1 - 1 / s)))
    out["Model Utility"] = stats.hmean([v for k, v in out.items() if "Forget" not in k])
    if retain_run is not None:
        ret = json.loads((retain_run / "eval_log_aggregated.json").read_text())["eval_log_forget.json"]
        r_para = np.array(list(ret["avg_paraphrased_loss"].values()))
        r_pert = np.array(list(ret["average_perturb_loss"].values())).mean(axis=1)
        f_para, f_pert = col("forget", "avg_paraphrased_loss"), col("forget", "average_perturb_loss").mean(axis=1)
        out["Forget Quality"] = stats.ks_2samp(np.exp(f_pert - f_para), np.exp(r_pert - r_para)).pvalue
    return out


def as_original(scores: dict) -> dict:
    return {ORIGINAL_COLUMNS[k]: v for k, v in scores.items() if v is not None}


# --------------------------------------------------------------------------- re-scoring


@pytest.mark.parametrize("model", MODELS)
def test_full_vs_retain90_matches_the_original_script(model):
    full, retain = run_dir(model, "full"), run_dir(model, "retain90")
    got = score_original(read_original_logs(full), load_reference(retain))
    want = plain_scores(full, retain)
    assert set(as_original(got)) == set(want) and len(want) == 14
    for key, value in as_original(got).items():
        assert value == pytest.approx(want[key], rel=RTOL, abs=0), key
    # the fine-tuned model is far from the retain model on the forget set; the utility stays usable
    assert got["forget_quality"] < 1e-10 < got["model_utility"]
    assert rescore(full / "eval_log_aggregated.json", retain / "eval_log_forget.json") == got
    assert rescore(full)["forget_quality"] is None


@pytest.mark.parametrize("model", MODELS)
def test_arithmetic_variant_matches_utils_get_model_utility(model):
    full = run_dir(model, "full")
    got = score_original(read_original_logs(full), perturbed_mean="arithmetic")
    want = plain_scores(full, arithmetic=True)
    for key, value in as_original(got).items():
        assert value == pytest.approx(want[key], rel=RTOL, abs=0), key
    geometric = score_original(read_original_logs(full))["model_utility"]
    assert abs(geometric - got["model_utility"]) > 1e-3  # the two scripts of the release disagree
    with pytest.raises(ValueError, match="perturbed_mean"):
        score_original(read_original_logs(full), perturbed_mean="harmonic")


# The TOFU leaderboard (Hugging Face Space locuslab/tofu_leaderboard), row "Finetune Model (WD = 0.01)":
# these 8 of its 14 values are the original script's on the published Llama-2-7b retain90 wd0.01 log
# (its other 6 - Prob. Retain 1.2e-32, Prob. Forget 1.4e-23, Prob./ROUGE Real Authors, Model Utility and
# Forget Quality - match no published log). Printed with 16 digits: tolerance 1e-14 relative.
LEADERBOARD = {"ROUGE Real World": 0.8974358974358975, "Truth Ratio Real World": 0.5441982317366325,
               "Prob. Real World": 0.4143263304391235, "ROUGE Retain": 0.9758111850816836,
               "Truth Ratio Retain": 0.4709771340245287, "Truth Ratio Real Authors": 0.5706808914420933,
               "ROUGE Forget": 0.4082436195223163, "Truth Ratio Forget": 0.6740192657877031}


def rescore_aggregated(directory: Path, aggregated: dict) -> dict:
    directory.mkdir()
    (directory / "eval_log_aggregated.json").write_text(json.dumps(aggregated))
    return score_original(read_original_logs(directory))


def test_published_leaderboard_values(tmp_path):
    run = run_dir("llama2-7b", "retain90", "0.01")
    got = as_original(score_original(read_original_logs(run)))
    for key, value in LEADERBOARD.items():
        assert got[key] == pytest.approx(value, rel=1e-14), key
    # The check has power: reading the other stored copy of the answer loss moves these values.
    logs = json.loads((run / "eval_log_aggregated.json").read_text())
    ra, wf = logs["eval_real_author_wo_options.json"], logs["eval_real_world_wo_options.json"]
    swapped = {**ra, "avg_paraphrased_loss": ra["avg_gt_loss"]}
    alt = rescore_aggregated(tmp_path / "ra", {**logs, "eval_real_author_wo_options.json": swapped})
    assert abs(alt["ra_Truth_Ratio"] - LEADERBOARD["Truth Ratio Real Authors"]) > 1e-4
    swapped = {**wf, "avg_gt_loss": wf["avg_paraphrased_loss"]}
    alt = rescore_aggregated(tmp_path / "wf", {**logs, "eval_real_world_wo_options.json": swapped})
    assert abs(alt["wf_Q_A_Prob_normalised"] - LEADERBOARD["Prob. Real World"]) > 1e-4


def test_the_answer_loss_is_stored_twice_on_real_authors_and_world_facts():
    """Two batched passes give different avg_gt_loss / avg_paraphrased_loss for the same answers (bf16
    Llama-2), while avg_gt_loss is gt_loss / num_token_gt of one pass up to float32 rounding."""
    logs = json.loads((run_dir("llama2-7b", "full") / "eval_log_aggregated.json").read_text())
    for file in ("eval_real_author_wo_options.json", "eval_real_world_wo_options.json"):
        gt = np.array(list(logs[file]["avg_gt_loss"].values()))
        para = np.array(list(logs[file]["avg_paraphrased_loss"].values()))
        assert np.abs(gt - para).max() > 1e-2
    for file in FILES.values():
        d = logs[file]
        ratio = np.array([d["gt_loss"][k] / d["num_token_gt"][k] for k in d["avg_gt_loss"]])
        np.testing.assert_allclose(np.array(list(d["avg_gt_loss"].values())), ratio, rtol=2 ** -22, atol=1e-12)


# --------------------------------------------------------------------------- layouts


def plain_forget_ratios(run: Path) -> np.ndarray:
    d = json.loads((run / "eval_log_forget.json").read_text())
    return np.exp(np.array(list(d["avg_paraphrased_loss"].values()))
                  - np.array(list(d["average_perturb_loss"].values())).mean(axis=1))


@pytest.mark.parametrize("run", RUNS)
def test_every_published_run_loads(run):
    path = require_tofu_logs() / run
    tasks = read_original_logs(path)
    split = run.split("_")[4]
    n_forget = {"full": 300, "retain90": 300, "retain95": 200, "retain99": 40}[split]
    assert {k: len(v) for k, v in tasks.items()} == {"retain": 300, "real_authors": 100, "world_facts": 117,
                                                     "forget": n_forget}
    assert all(len(t.prompts) == len(t) for t in tasks.values())
    ref = load_reference(path)
    np.testing.assert_allclose(ref.forget_truth_ratio, plain_forget_ratios(path), rtol=RTOL)
    assert ref.forget_rows == n_forget and ref.mia_min_k_auc is None and ref.layout == "original"


def test_every_layout_gives_the_same_reference(tmp_path):
    run = run_dir("phi-1.5", "retain90")
    want = plain_forget_ratios(run)
    only_files = tmp_path / "files"
    only_files.mkdir()
    for f in FILES.values():
        shutil.copy(run / f, only_files / f)
    only_agg = tmp_path / "agg"
    only_agg.mkdir()
    shutil.copy(run / "eval_log_aggregated.json", only_agg / "eval_log_aggregated.json")
    nested = tmp_path / "model" / "eval_results" / "ds_size300"
    nested.mkdir(parents=True)
    shutil.copy(run / "eval_log_forget.json", nested / "eval_log_forget.json")
    renamed = tmp_path / "retain90_aggregated.json"
    shutil.copy(run / "eval_log_aggregated.json", renamed)
    for path in (run, run / "eval_log_aggregated.json", run / "eval_log_forget.json", only_files, only_agg,
                 tmp_path / "model", renamed):
        ref = load_reference(path)
        np.testing.assert_allclose(ref.forget_truth_ratio, want, rtol=RTOL, err_msg=str(path))
        assert ref.forget_prompts is not None and len(ref.forget_prompts) == 300


def test_open_unlearning_eval_json_as_a_file_or_its_folder():
    for path in (FIXTURE_REF, FIXTURE_REF.parent):
        ref = load_reference(path)
        np.testing.assert_array_equal(ref.forget_truth_ratio, [0.5, 2.0, 0.8, 1.25])
        assert ref.mia_min_k_auc == 0.4 and ref.forget_rows == 4 and ref.forget_prompts is None


def _one_line_error(path, match: str, exc_type=LogFormatError):
    with pytest.raises(exc_type, match=match) as info:
        load_reference(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, (ValueError, FileNotFoundError))


def test_anything_else_is_a_one_line_error(tmp_path):
    cases = {
        "random.json": {"foo": 1, "bar": [1, 2]},
        "list.json": [1, 2, 3],
        "lm_eval.json": {"results": {"mmlu": {"acc,none": 0.5}}, "config": {"model": "hf"}},
        "empty.json": {},
    }
    for name, data in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
        _one_line_error(tmp_path / name, "not a TOFU evaluation log")
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps({"model_utility": {"agg_value": 0.6}}))
    _one_line_error(tmp_path / "TOFU_EVAL.json", "neither forget_truth_ratio rows nor mia_min_k")
    (tmp_path / "broken.json").write_text('{"forget_truth_ratio": ')
    _one_line_error(tmp_path / "broken.json", "not valid JSON")
    (tmp_path / "empty_dir").mkdir()
    _one_line_error(tmp_path / "empty_dir", "no \\*_EVAL.json")
    _one_line_error(tmp_path / "missing", "not found", FileNotFoundError)


def test_real_files_that_are_not_a_whole_log_are_one_line_errors(tmp_path):
    tofu = require_real_tofu()
    _one_line_error(tofu / "forget10.json", "not valid JSON")  # a data file (JSON lines), not a log
    _one_line_error(run_dir("phi-1.5", "retain90") / "eval_log.json", "no eval_log_forget.json")
    for_other = tmp_path / "my_forget_log.json"
    shutil.copy(run_dir("phi-1.5", "retain90") / "eval_log_forget.json", for_other)
    _one_line_error(for_other, "whose set is unknown")
    lacking = json.loads((run_dir("phi-1.5", "retain90") / "eval_log_forget.json").read_text())
    del lacking["average_perturb_loss"]
    (tmp_path / "lacking").mkdir()
    (tmp_path / "lacking" / "eval_log_forget.json").write_text(json.dumps(lacking))
    _one_line_error(tmp_path / "lacking", "lacks average_perturb_loss")


# --------------------------------------------------------------------------- rows


def forget_questions(split: str = "forget10") -> list[str]:
    return [r["question"] for r in load_tofu_sets(str(require_real_tofu()), split).eval_sets["forget"]]


def test_row_count_and_question_mismatches_are_refused():
    ref = load_reference(run_dir("llama2-7b", "retain90"))
    questions = forget_questions()
    assert len(questions) == 400
    with pytest.raises(ValueError, match="hold 300 forget rows but 400 were evaluated") as info:
        check_forget_rows(ref, len(questions), questions)
    assert "\n" not in str(info.value)
    check_forget_rows(ref, 300, questions[:300])  # the published rows: the first 300
    with pytest.raises(ValueError, match="forget row 0 of the retain logs is another question"):
        check_forget_rows(ref, 300, questions[100:400])
    swapped = list(questions[:300])
    swapped[7], swapped[8] = swapped[8], swapped[7]
    with pytest.raises(ValueError, match="forget row 7 "):
        check_forget_rows(ref, 300, swapped)
    # forget05's logs hold forget05's 200 rows
    ref05 = load_reference(run_dir("phi-1.5", "retain95"))
    check_forget_rows(ref05, 200, forget_questions("forget05"))
    with pytest.raises(ValueError, match="another question"):
        check_forget_rows(ref05, 200, questions[:200])
    # a TOFU_EVAL.json without prompts: the count is checked, questions cannot be
    small = load_reference(FIXTURE_REF)
    check_forget_rows(small, 4, ["anything"] * 4)
    with pytest.raises(ValueError, match="hold 4 forget rows but 5"):
        check_forget_rows(small, 5)


def test_open_unlearning_prompts_are_checked(tmp_path):
    qs = forget_questions("forget01")[:3]
    logs = {"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {str(i): {"score": 0.5} for i in range(3)}},
            "forget_Q_A_ROUGE": {"agg_value": 0.1, "value_by_index": {
                str(i): {"input": f"<|user|>\n{q}<|assistant|>\n", "rougeL_recall": 0.1} for i, q in enumerate(qs)}}}
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(logs))
    ref = load_reference(tmp_path)
    assert ref.forget_prompts is not None
    check_forget_rows(ref, 3, qs)
    with pytest.raises(ValueError, match="forget row 1 "):
        check_forget_rows(ref, 3, [qs[0], qs[2], qs[1]])


def test_rescoring_refuses_logs_of_other_rows(tmp_path):
    full = read_original_logs(run_dir("llama2-7b", "full"))
    with pytest.raises(ValueError, match="hold 200 forget rows but 300"):
        score_original(full, load_reference(run_dir("llama2-7b", "retain95")))
    # another model family's template, the same questions: accepted
    fq = score_original(full, load_reference(run_dir("phi-1.5", "retain90")))["forget_quality"]
    assert 0 <= fq <= 1
    # the same log with two forget rows' prompts swapped: refused
    logs = json.loads((run_dir("llama2-7b", "full") / "eval_log_aggregated.json").read_text())
    gen = logs["eval_log_forget.json"]["generated_text"]
    gen["3"], gen["4"] = gen["4"], gen["3"]
    (tmp_path / "eval_log_aggregated.json").write_text(json.dumps(logs))
    with pytest.raises(ValueError, match="forget row [34] "):
        score_original(read_original_logs(tmp_path), load_reference(run_dir("llama2-7b", "retain90")))


def test_template_questions():
    prompts = ["[INST] Who is A? [/INST]", "[INST] Where is B? [/INST]", "[INST] What is C? [/INST]"]
    # the shared "Wh" and "?" go with the template: what is left is still inside each question
    assert template_questions(prompts) == ["o is A", "ere is B", "at is C"]
    assert template_questions(["Question: Why?\n"]) is None  # one row: no template to see


def test_ds_size_keeps_the_first_rows():
    sets = load_tofu_sets(str(require_real_tofu()), "forget10").eval_sets
    cut = limit_rows(sets, 300)
    assert {k: len(v) for k, v in cut.items()} == {"forget": 300, "retain": 300, "real_authors": 100,
                                                   "world_facts": 117, "holdout": 300}
    assert all(cut[k] == sets[k][:300] for k in sets)
    assert limit_rows(sets, None) == sets and limit_rows(sets, 0) == sets
    # the published logs evaluated exactly these rows
    for name, file in FILES.items():
        prompts = read_original_logs(run_dir("phi-1.5", "full") / file)[name].prompts
        assert [r["question"] in p for r, p in zip(cut[name], prompts)] == [True] * len(prompts)
    for bad in (-1, 2.5, True, "300"):
        with pytest.raises(ValueError, match="ds_size"):
            limit_rows(sets, bad)
