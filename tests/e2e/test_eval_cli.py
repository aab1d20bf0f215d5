"""End to end through the CLIs: a tiny random model saved to disk, evaluated on the fixtures."""

import json

import pytest
from fixtures.tiny import RWKU_DIR, TOFU_DIR, save_tiny_model

from atwu_fast.eval.__main__ import main as eval_main
from atwu_fast.unlearn.__main__ import main as unlearn_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("cli") / "model", chat=True)


def test_eval_cli_tofu_then_retain_logs(model_dir, tmp_path, capsys):
    common = ["--benchmark", "tofu", "--split", "forget10", "--model", str(model_dir), "--data-dir", str(TOFU_DIR),
              "--benchmark.max_new_tokens", "4", "--benchmark.eval_batch_size", "3"]
    assert eval_main(common + ["--output-dir", str(tmp_path / "a")]) == 0
    logs = json.loads((tmp_path / "a" / "TOFU_EVAL.json").read_text())
    summary = json.loads((tmp_path / "a" / "TOFU_SUMMARY.json").read_text())
    assert "forget_quality" not in summary and logs["forget_quality"]["agg_value"] is None
    assert {"model_utility", "privleak", "extraction_strength", "forget_Q_A_ROUGE"} <= set(summary)
    assert logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]["input"].startswith("<s>system: You are a helpful")
    # the same model as its own "retain model": identical truth ratios and AUC -> FQ = 1, privleak = 0
    assert eval_main(common + ["--output-dir", str(tmp_path / "b"), "--retain-logs", str(tmp_path / "a")]) == 0
    summary_b = json.loads((tmp_path / "b" / "TOFU_SUMMARY.json").read_text())
    assert summary_b["forget_quality"] == pytest.approx(1.0)
    assert summary_b["privleak"] == pytest.approx(0.0, abs=1e-6)
    assert "model_utility" in capsys.readouterr().out


def test_eval_cli_rwku_and_errors(model_dir, tmp_path, capsys):
    assert eval_main(["--benchmark", "rwku", "--targets", "1", "--model", str(model_dir), "--data-dir",
                      str(RWKU_DIR), "--benchmark.max_new_tokens", "3", "--output-dir", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "RWKU_SUMMARY.json").read_text())
    assert {"forget_FB", "forget_all", "neighbor_all", "mia_FM", "mia_RM"} <= set(summary)
    with pytest.raises(SystemExit) as exc:
        eval_main(["--benchmark", "tofu", "--model", str(model_dir), "--data-dir", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        eval_main(["--benchmark", "tofu", "--split", "forget07", "--model", str(model_dir), "--data-dir", str(TOFU_DIR)])
    assert exc.value.code == 2 and "forget07" in capsys.readouterr().err


def test_unlearn_cli_tofu_keeps_best_epoch(model_dir, tmp_path):
    out = tmp_path / "run"
    assert unlearn_main(["--benchmark", "tofu", "--split", "forget10", "--model", str(model_dir),
                         "--benchmark.data_dir", str(TOFU_DIR), "--method", "grad_diff", "--benchmark.epochs", "2",
                         "--train.forget_batch_size", "4", "--train.retain_batch_size", "2",
                         "--benchmark.eval_every_epoch", "true", "--benchmark.keep_best_by", "model_utility",
                         "--benchmark.max_new_tokens", "3", "--retain-logs", str(TOFU_DIR.parent / "tofu_retain_logs"),
                         "--output-dir", str(out)]) == 0
    run = out / "grad_diff"
    assert (run / "TOFU_EVAL.json").is_file() and (run / "epoch_1" / "TOFU_SUMMARY.json").is_file()
    assert (run / "epoch_2" / "TOFU_EVAL.json").is_file() and (run / "model" / "config.json").is_file()
    assert (run / "best" / "best.json").is_file()
    history = json.loads((run / "history.json").read_text())
    assert len(history["steps"]) == 2 and [e["epoch"] for e in history["evals"]] == [1, 2]
    results = json.loads((out / "results.json").read_text())
    assert "forget_quality" in results["grad_diff"]


def test_unlearn_cli_rwku_with_spans(model_dir, tmp_path):
    spans = tmp_path / "spans.json"
    spans.write_text(json.dumps([{"target_words": ["Carrie"]}, {"target_words": ["Portland", "Maine"]}]))
    out = tmp_path / "rw"
    assert unlearn_main(["--benchmark", "rwku", "--targets", "1", "--model", str(model_dir), "--benchmark.data_dir",
                         str(RWKU_DIR), "--method", "wga", "--train.steps", "1", "--benchmark.spans_file", str(spans),
                         "--benchmark.max_new_tokens", "2", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "wga" / "RWKU_SUMMARY.json").read_text())
    assert "span_auroc" in summary and "forget_all" in summary


def test_unlearn_cli_tofu_npo_with_lora_and_8bit(model_dir, tmp_path):
    """The efficiency options reach the real-benchmark path: LoRA adapter saved (no second model
    copy for NPO's reference: the adapter-disabled base), 8-bit AdamW, gradient checkpointing."""
    out = tmp_path / "lora"
    assert unlearn_main(["--benchmark", "tofu", "--split", "forget01", "--model", str(model_dir),
                         "--benchmark.data_dir", str(TOFU_DIR), "--method", "npo", "--train.steps", "2",
                         "--train.forget_batch_size", "2", "--train.retain_batch_size", "2",
                         "--efficiency.lora_rank", "4", "--efficiency.lora_targets", "q_proj,v_proj",
                         "--efficiency.optim", "adamw_8bit", "--efficiency.gradient_checkpointing",
                         "--benchmark.max_new_tokens", "2", "--output-dir", str(out)]) == 0
    saved = out / "npo" / "model"
    assert (saved / "adapter_config.json").is_file() and (saved / "adapter_model.safetensors").is_file()
    assert not (saved / "model.safetensors").exists()
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"q_proj", "v_proj"}
