"""The experiment config is a real class whose sections come from the registries; a benchmark's own
options live in its own section and cannot be set for another benchmark; options that moved say where
to; ``--help`` shows the value the chosen method runs with on the chosen benchmark, and why."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

import pytest

from atwu_fast.config.args import parse_config
from atwu_fast.methods import param_sections
from atwu_fast.suites import suite_sections
from atwu_fast.suites.config import MOVED
from atwu_fast.suites.tofu.tiny import TinyTofuSuite
from atwu_fast.unlearn.__main__ import main
from atwu_fast.unlearn.experiment import SHORTCUTS, ExperimentConfig


def config(*argv):
    return parse_config(ExperimentConfig, list(argv), prog="t", description="", shortcuts=SHORTCUTS, moved=MOVED)


def one_line_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_the_config_is_a_class_in_source_with_every_registered_section():
    assert inspect.getsource(ExperimentConfig).startswith("@dataclass\n@with_registered_sections\nclass ExperimentConfig")
    fields = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
    for name, cls in {**param_sections(), **suite_sections()}.items():
        assert fields[name] is cls, name
    assert {"tofu", "tiny", "rwku", "jsonl", "data", "eval"} <= set(suite_sections())
    cfg = ExperimentConfig()
    assert cfg.tofu.split == "forget10" and cfg.rwku.targets == 1 and cfg.jsonl.forget_file == ""


@pytest.mark.parametrize("argv, message", [
    (["--rwku.targets", "3"], "--rwku.targets is an option of --benchmark rwku; it does not apply to --benchmark synthetic"),
    (["--benchmark", "tofu", "--model", "m", "--jsonl.forget_file", "f.jsonl"],
     "--jsonl.forget_file is an option of --benchmark jsonl; it does not apply to --benchmark tofu"),
    (["--benchmark", "tofu", "--model", "m", "--tiny.extra_authors", "2"],
     "--tiny.extra_authors is an option of --benchmark tofu_tiny; it does not apply to --benchmark tofu"),
    (["--benchmark", "rwku", "--model", "m", "--split", "forget01"],
     "--tofu.split is an option of --benchmark tofu; it does not apply to --benchmark rwku"),
    (["--benchmark", "jsonl", "--model", "m", "--eval.batch_size", "4"],
     "--eval.batch_size is an option of --benchmark synthetic; it does not apply to --benchmark jsonl"),
])
def test_an_option_of_another_benchmark_is_a_one_line_error(capsys, argv, message):
    assert one_line_error(capsys, *argv) == f"error: {message}"


def test_each_benchmark_takes_its_own_options():
    assert config("--benchmark", "rwku", "--model", "m", "--targets", "3", "--rwku.rouge", "rouge_score").rwku.targets == 3
    tiny = config("--benchmark", "tofu_tiny", "--tiny.extra_authors", "2", "--split", "forget01")
    assert (tiny.benchmark.name, tiny.benchmark.model, tiny.tiny.extra_authors, tiny.tofu.split) == \
        ("tofu", "tiny", 2, "forget01")
    assert set(TinyTofuSuite.sections) == {"tofu", "tiny"}


def test_a_moved_option_names_its_new_place(capsys, tmp_path):
    assert one_line_error(capsys, "--benchmark.split", "forget05") == "error: --benchmark.split is now --tofu.split"
    assert one_line_error(capsys, "--benchmark.rwku_rouge=rouge_score") == \
        "error: --benchmark.rwku_rouge is now --rwku.rouge"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("benchmark:\n  forget_file: f.jsonl\n")
    assert one_line_error(capsys, "--config", str(yaml_file)) == \
        "error: --benchmark.forget_file is now --jsonl.forget_file"
    for new in MOVED.values():  # every new place exists
        section, key = new.split(".")
        assert hasattr(getattr(ExperimentConfig(), section), key), new


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def shown_value(text: str, flag: str) -> str:
    """The last parenthesis of ``flag``'s help entry (the entry: its line and the indented lines below)."""
    entry = re.search(r"^  " + re.escape(flag) + r"\b.*?(?=^  \S|^\S|\Z)", text, re.M | re.S)
    assert entry, flag
    return " ".join(entry.group(0).split()).rsplit("(", 1)[1].rstrip(")")


def test_help_shows_what_the_chosen_method_runs_with_on_the_chosen_benchmark(capsys):
    lr = json.loads(TinyTofuSuite.tuned_file.read_text())["methods"]["wga"]["train.lr"]
    text = help_text(capsys, "--benchmark", "tofu_tiny", "--method", "wga", "--wga.beta", "2")
    assert "Values shown for method wga on benchmark tofu_tiny" in " ".join(text.split())
    default_lr = ExperimentConfig().train.lr
    assert shown_value(text, "--train.lr FLOAT") == f"runs with {lr!r}: tuned for it on this benchmark; default: {default_lr!r}"
    assert shown_value(text, "--wga.beta FLOAT") == "runs with 2.0: yours; default: 1.0"
    assert shown_value(text, "--train.steps INT").startswith(("default:", "runs with"))
    plain = help_text(capsys)  # the default command: atwu_logfit on the embedded benchmark
    assert shown_value(plain, "--atwu.lambda_fit FLOAT").endswith("fixed by the method; default: 0.0")
    for section in ("tofu:", "rwku:", "jsonl:", "tiny:", "benchmark:"):  # one help group per section
        assert f"\n{section}\n" in plain, section
