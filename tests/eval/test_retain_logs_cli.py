"""--retain-logs through today's eval CLI: a JSON that is no harness log exits 2 with one line before any
model is loaded; the original release's layout is accepted. (The retain logs load before the model, so a
missing model shows how far a run got.)"""

import json

import pytest
from fixtures.real_data import require_tofu_logs
from fixtures.tiny import TOFU_DIR

from atwu_fast.eval.__main__ import main as eval_main


def run(tmp_path, retain_logs, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        eval_main(["--benchmark", "tofu", "--split", "forget10", "--model", str(tmp_path / "no-model"),
                   "--data-dir", str(TOFU_DIR), "--retain-logs", str(retain_logs), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def test_retain_logs_errors_and_layouts(tmp_path, capsys):
    other = tmp_path / "other_harness.json"
    other.write_text(json.dumps({"results": {"mmlu": {"acc,none": 0.5}}, "versions": {"mmlu": 1}}))
    code, err = run(tmp_path, other, capsys)
    assert code == 2 and "\n" not in err and "--retain-logs" in err and "not a TOFU evaluation log" in err
    code, err = run(tmp_path, TOFU_DIR.parent / "tofu_retain_logs", capsys)  # open-unlearning's TOFU_EVAL.json
    assert code == 2 and "could not load" in err, err  # got past the retain logs (the tokenizer or model is next)


def test_retain_logs_in_the_original_release_layout(tmp_path, capsys):
    run_dir = require_tofu_logs() / "ft_epoch5_lr2e-05_phi_retain90_wd0"
    for ok in (run_dir, run_dir / "eval_log_aggregated.json"):
        code, err = run(tmp_path, ok, capsys)
        assert code == 2 and "could not load" in err, err
