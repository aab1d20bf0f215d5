"""The comparison set through `python -m atwu_fast.unlearn` on a tiny embedded benchmark: every new
method and plug-in pair writes its row, its outputs and its report section; --weights names the pair."""

import json

import pytest
from test_cli import TINY, assert_methods_unlearned  # tests/e2e is on sys.path

from atwu_fast.unlearn.__main__ import main

pytestmark = pytest.mark.slow
NEW = ["rmu", "dpo", "idk_dpo", "undial", "seul", "npo+atwu", "rmu+atwu"]


def test_new_methods_and_plug_ins_write_rows_and_reports(tmp_path):
    out = tmp_path / "out"
    assert main(TINY + ["--methods", ",".join(NEW), "--output-dir", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == NEW
    for name in NEW:
        assert 0.0 <= results[name]["forget_quality"] <= 1.0 and results[name]["model_utility"] >= 0.0
        assert (out / name / "metrics.json").is_file() and (out / name / "token_scores.json").is_file()
    # every method changed the target model and unlearned selectively; all but SEUL, whose mask pushes on a
    # few surprising tokens while its retain term lifts every answer, lowered the forget probability itself
    assert_methods_unlearned(out, tmp_path / "c", NEW, forget_prob_falls=[m for m in NEW if m != "seul"])
    assert results["npo+atwu"]["span_auroc"] is not None
    # RMU computes no token weights: its tokens are ranked by their NLL increase, like every such method
    assert results["rmu"]["span_auroc"] == results["rmu"]["span_auroc_delta"] is not None
    assert json.loads((out / "rmu" / "token_scores.json").read_text())["score_key"] == "nll_delta"
    assert results["seul"]["span_auroc"] is not None  # its mask is its token weight
    assert (out / "npo+atwu" / "scorer.safetensors").is_file()
    report = (out / "report.html").read_text()
    assert all(f'id="m-{name}"' in report for name in NEW)
    doc = json.loads((out / "seul" / "token_scores.json").read_text())
    assert doc["score_name"] == "seul token mask" and set(doc["rows"][0]["scores"]) <= {0.0, 1.0}


def test_weights_flag_runs_the_plug_in_pair(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(TINY + ["--method", "simnpo", "--weights", "truth", "--output-dir", str(out),
                        "--cache-dir", str(tmp_path / "c")]) == 0
    assert list(json.loads((out / "results.json").read_text())) == ["simnpo+truth"]
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--method", "wga", "--weights", "atwu", "--output-dir", str(tmp_path / "bad")])
    assert exc.value.code == 2 and "does not take token weights" in capsys.readouterr().err
