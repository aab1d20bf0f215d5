"""One order of layers decides every value a method runs with — default < method < tuned < user, a
method's fixed fields winning for that method — and config.yaml / --print-config say which layer
each value came from."""

from __future__ import annotations

import yaml

from atwu_fast.config.args import parse_config
from atwu_fast.unlearn.__main__ import main
from atwu_fast.unlearn.experiment import SHORTCUTS, ExperimentConfig
from atwu_fast.unlearn.resolve import annotated_yaml, resolve


class TunedSuite:
    name = "toy"

    def tuned(self):
        return {"atwu_logfit": {"train.lr": 0.004, "atwu.beta": 2.5, "atwu.scorer_lr": 0.07},
                "npo": {"train.lr": 0.002}}


def config(*argv):
    return parse_config(ExperimentConfig, list(argv), prog="t", description="", shortcuts=SHORTCUTS, explicit=True)


def test_layers_apply_in_one_order_with_their_sources():
    cfg, explicit = config("--atwu.beta", "7", "--atwu.lambda_fit", "0.3", "--train.steps", "5")
    r = resolve(cfg, TunedSuite(), "atwu_logfit", frozenset(explicit))
    assert r.values["train"]["lr"] == 0.004 and r.sources["train.lr"] == "tuned"
    assert r.values["atwu"]["scorer_lr"] == 0.07 and r.sources["atwu.scorer_lr"] == "tuned"
    assert r.values["atwu"]["beta"] == 7 and r.sources["atwu.beta"] == "user"  # the user's flag beats tuned
    assert r.values["atwu"]["lambda_fit"] == 1.0 and r.sources["atwu.lambda_fit"] == "method"  # fixed wins
    assert r.values["train"]["steps"] == 5 and r.sources["train.steps"] == "user"
    assert "train.seed" not in r.sources and r.values["train"]["seed"] == ExperimentConfig().train.seed
    assert r.cfg.train.lr == 0.004 and r.cfg.atwu.beta == 7  # the run reads the same values
    plain = resolve(cfg, TunedSuite(), "atwu", frozenset(explicit))  # atwu fixes nothing
    assert plain.values["atwu"]["lambda_fit"] == 0.3 and plain.sources["atwu.lambda_fit"] == "user"
    assert plain.values["train"]["lr"] == ExperimentConfig().train.lr and "train.lr" not in plain.sources
    off, explicit_off = config("--tuned", "false")
    assert "train.lr" not in resolve(off, TunedSuite(), "npo", frozenset(explicit_off)).sources


def test_annotated_yaml_loads_back_to_the_values_and_names_each_source():
    cfg, explicit = config("--train.steps", "5")
    r = resolve(cfg, TunedSuite(), "atwu_logfit", frozenset(explicit))
    text = annotated_yaml(r, "atwu_logfit on toy")
    assert yaml.safe_load(text) == r.values
    train = text.split("\ntrain:\n")[1].split("\n", 3)[:3]
    assert train[:2] == ["  lr: 0.004  # tuned", "  steps: 5  # user"]
    assert "\n  lambda_fit: 1.0  # method\n" in text
    assert "  seed: 0\n" in text and "seed: 0  #" not in text  # defaults carry no comment


def test_print_config_shows_each_methods_values_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--methods", "atwu_logfit,wga", "--wga.beta", "2", "--print-config"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("# wga on synthetic")
    assert first.startswith("# atwu_logfit on synthetic") and "lambda_fit: 1.0  # method" in first
    assert "  beta: 2.0  # user" in second
    assert not any(tmp_path.iterdir())  # no run directory, no cache
