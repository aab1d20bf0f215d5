"""`python -m atwu_fast.unlearn` end to end on a tiny config, and its one-line errors."""

import json
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from atwu_fast.unlearn.__main__ import main

pytestmark = pytest.mark.slow

TINY = [
    "--data.n_forget_authors", "4", "--data.n_retain_authors", "5", "--data.n_holdout_authors", "2",
    "--data.n_general", "6", "--tokenizer.vocab_size", "400", "--model.hidden_size", "32",
    "--model.num_layers", "1", "--model.num_heads", "2", "--model.intermediate_size", "64",
    "--pretrain.max_steps", "25", "--pretrain.min_steps", "1", "--train.steps", "4",
    "--train.forget_batch_size", "4", "--train.retain_batch_size", "4", "--eval.eval_every", "2",
    "--eval.max_new_tokens", "6", "--eval.retain_authors", "0", "--threads", "1",
    "--tuned", "false",  # fixed hyper-parameters, in process and in subprocesses alike (test_tuned_defaults: the other path)
]
REQUIRED = {"forget_quality", "model_utility", "forget_acc", "retain_acc", "span_auroc", "span_ap", "span_auroc_avg",
            "leak_paraphrase", "leak_icr", "leak_worst", "leak_retain"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = root / "out"
    assert main(TINY + ["--methods", "atwu,wga,grad_diff", "--output-dir", str(out),
                        "--cache-dir", str(root / "cache")]) == 0
    return out, root


def test_results_json_has_every_method_and_required_keys(run_dir):
    out, root = run_dir
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"atwu", "wga", "grad_diff"}
    for name, metrics in results.items():
        assert REQUIRED <= set(metrics), name
        assert 0.0 <= metrics["forget_quality"] <= 1.0
        assert 0.0 <= metrics["model_utility"] <= 1.0
        for key in ("leak_paraphrase", "leak_icr", "leak_worst", "leak_retain"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        # the worst case is at least each of its parts
        assert metrics["leak_worst"] >= max(metrics["leak_paraphrase"], metrics["leak_icr"])
    assert 0.0 <= results["atwu"]["span_auroc"] <= 1.0
    # GradDiff has no token weights: its span AUROC ranks tokens by their NLL increase (token_scores.json)
    for name in results:  # the file rounds scores to 1e-6: only pairs closer than that can tie differently
        assert results[name]["span_auroc"] == pytest.approx(token_score_auroc(out / name), abs=5e-3), name
    assert results["grad_diff"]["span_auroc"] == results["grad_diff"]["span_auroc_delta"]
    # GradDiff's ascent outweighs its retain term here; ATWU's and WGA's forget weights p^β are small on a
    # model fine-tuned for 25 steps (forget probability < 0.01), so their retain term lifts the forget
    # probability too, only less than the retain probability
    assert_methods_unlearned(out, root / "cache", list(results), forget_prob_falls=["grad_diff"])


def assert_methods_unlearned(out, cache, methods, forget_prob_falls=()):
    """What a method that does nothing (its model = the target) fails, from values the run itself wrote:
    every method's weights moved from the cached target model's, and its forget answers lost probability
    relative to its retain answers against the target model's row in reference.json; the methods in
    ``forget_prob_falls`` also lowered the forget probability itself."""
    results = json.loads((out / "results.json").read_text())
    target = json.loads((out / "reference.json").read_text())["models"]["target model"]
    lr = yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"]
    (target_file,) = cache.glob("target-*/model.safetensors")
    start = load_file(str(target_file))
    for name in methods:
        weights = load_file(str(out / name / "model" / "model.safetensors"))
        assert weights.keys() == start.keys(), name
        moved = max((weights[k].float() - start[k].float()).abs().max().item() for k in start)
        # AdamW's first step moves every weight with a gradient by lr·g/(|g| + ε) ≈ ±lr, so after 4 steps some
        # weight whose gradient kept its sign sits ≈ 4·lr from the target (measured: 4.01·lr); doing nothing: 0
        assert moved >= lr, (name, moved, lr)
        # the evaluation is deterministic: an unchanged model reproduces the target's ratio exactly
        ratio = results[name]["forget_prob"] / results[name]["retain_prob"]
        assert ratio < target["forget_prob"] / target["retain_prob"], (name, ratio, target)
    for name in forget_prob_falls:
        assert results[name]["forget_prob"] < target["forget_prob"], (name, results[name], target)


def token_score_auroc(method_dir) -> float:
    """AUROC of the scores token_scores.json shows against author-unique tokens, recomputed plainly."""
    from sklearn.metrics import roc_auc_score

    doc = json.loads((method_dir / "token_scores.json").read_text())
    scores = [s for row in doc["rows"] for s in row[doc["score_key"]]]
    unique = [int(k == 2) for row in doc["rows"] for k in row["span_kind"]]
    return roc_auc_score(unique, scores)


def test_outputs_model_scorer_and_resolved_config(run_dir):
    out, _ = run_dir
    model = AutoModelForCausalLM.from_pretrained(out / "atwu" / "model")
    assert model.config.hidden_size == 32
    scorer = load_file(str(out / "atwu" / "scorer.safetensors"))
    assert scorer["weight"].shape == (32,)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["steps"] == 4 and cfg["methods"] == ["atwu", "wga", "grad_diff"]
    history = json.loads((out / "atwu" / "history.json").read_text())
    assert [c["step"] for c in history["span_checkpoints"]] == [2, 4]
    assert len(history["steps"]) == 4


def test_models_are_cached_and_reused(run_dir, capsys):
    out, root = run_dir
    assert main(TINY + ["--method", "wga", "--output-dir", str(root / "out2"), "--cache-dir", str(root / "cache"),
                        "--eval.leak", "false"]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuning" not in printed and "training a byte-level BPE" not in printed
    first = json.loads((out / "results.json").read_text())["wga"]
    second = json.loads((root / "out2" / "results.json").read_text())["wga"]
    assert first["forget_quality"] == pytest.approx(second["forget_quality"])  # deterministic
    assert "leak_worst" not in second and "leak_retain" not in second  # --eval.leak false


@pytest.mark.parametrize("args, message", [
    (["--train.lr", "fast"], "train.lr: expected a number"),
    (["--method", "atwv"], "did you mean 'atwu'"),
    (["--train.stepz", "3"], "unrecognized arguments"),
    (["--atwu.budget", "2"], "atwu.budget must be in (0, 1)"),
    (["--config", "missing.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "atwu_fast.unlearn", *args, "--output-dir", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_yaml_config_with_unknown_key_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  stepps: 3\n")
    proc = subprocess.run([sys.executable, "-m", "atwu_fast.unlearn", "--config", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'stepps' (did you mean 'steps'?)" in proc.stderr


def test_help_documents_every_option():
    proc = subprocess.run([sys.executable, "-m", "atwu_fast.unlearn", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for flag in ("--atwu.update_every", "--train.lr", "--data.n_forget_authors", "--methods", "--config"):
        assert flag in proc.stdout
