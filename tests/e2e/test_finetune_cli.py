"""``python -m atwu_fast.finetune``: fine-tunes a tiny or a pretrained model on a TOFU config, resumes a
crashed run to the weights of an uninterrupted one, and refuses bad input with one line and exit 2. The
fine-tuning runs read the real TOFU data (``ATWU_TEST_DATA``, tests/fixtures/real_data.py): skipped without it."""

import json
from pathlib import Path

import pytest
import torch
from fixtures.real_data import require_real_tofu, tofu_dir
from fixtures.tiny import TOFU_DIR, save_tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from atwu_fast.finetune.__main__ import main
from atwu_fast.finetune.loop import FineTuner

TOFU = tofu_dir()  # a path only: the tests that read it call require_real_tofu() first
TINY = ["--benchmark.data_dir", str(TOFU), "--split", "forget01", "--model", "tiny", "--tiny.vocab_size", "400",
        "--tiny.model.hidden_size", "32", "--tiny.model.intermediate_size", "64", "--tiny.model.num_layers", "1",
        "--finetune.batch_size", "8", "--finetune.epochs", "1.5", "--finetune.min_steps", "0",
        "--threads", "1"]  # forget01: 40 rows, 1.5 epochs of 8 = 8 steps


class Crash(Exception):
    pass


def weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.slow
def test_tiny_fine_tuning_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    require_real_tofu()
    assert main(TINY + ["--output-dir", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "model" / "finetune_summary.json").read_text())
    assert summary["steps"] == 8 and summary["rows"] == 40 and len(summary["history"]) == 8
    assert summary["history"][-1] < summary["history"][0]  # it learns
    assert not (tmp_path / "a" / "checkpoints").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model")
    assert model.config.hidden_size == 32 and model.config.vocab_size == 400

    step, calls = FineTuner.train_step, []

    def crash_on_the_seventh(self):
        calls.append(1)
        if len(calls) == 7:
            raise Crash()
        return step(self)

    monkeypatch.setattr(FineTuner, "train_step", crash_on_the_seventh)
    with pytest.raises(Crash):
        main(TINY + ["--checkpoint-every", "3", "--output-dir", str(tmp_path / "b")])
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-0000006"
    assert not (tmp_path / "b" / "model").exists()
    monkeypatch.setattr(FineTuner, "train_step", step)
    assert main(TINY + ["--checkpoint-every", "3", "--output-dir", str(tmp_path / "b"), "--resume"]) == 0
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(TINY + ["--output-dir", str(tmp_path / "b"), "--resume"]) == 0  # finished: nothing to do


@pytest.mark.slow
def test_a_pretrained_model_with_its_chat_template_and_lora_merged(tmp_path, capsys):
    require_real_tofu()
    base = save_tiny_model(tmp_path / "base", chat=True)
    out = tmp_path / "out"
    assert main(["--benchmark.data_dir", str(TOFU), "--split", "forget01", "--model", str(base), "--finetune.lr",
                 "1e-2", "--finetune.max_steps", "3", "--finetune.min_steps", "0", "--benchmark.chat_template", "on",
                 "--efficiency.lora_rank", "4", "--efficiency.save_merged", "--output-dir", str(out)]) == 0
    tuned = AutoModelForCausalLM.from_pretrained(out / "model")
    before = AutoModelForCausalLM.from_pretrained(base)
    moved = [n for n, p in tuned.named_parameters() if not torch.equal(p, dict(before.named_parameters())[n])]
    assert moved and all("proj" in n for n in moved)  # LoRA merged into the adapted projections only
    assert "(chat template)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    ([], "--model is required"),
    (["--model", "tiny", "--benchmark", "rwku"], "fine-tunes on TOFU configs"),
    (["--model", "tiny", "--finetune.lr", "0"], "must be positive"),
    (["--model", "tiny", "--benchmark.data_dir", str(TOFU_DIR), "--split", "forget99"], "no file for config 'forget99'"),
    (["--model", "tiny", "--resume"], "--resume needs the --output-dir of an interrupted run"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        main(args + ["--output-dir", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_non_empty_output_dir_is_refused(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "something").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["--model", "tiny", "--output-dir", str(tmp_path / "o")])
    assert exc.value.code == 2 and "is not empty" in capsys.readouterr().err
