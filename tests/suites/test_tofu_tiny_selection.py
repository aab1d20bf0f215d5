"""The laptop-scale TOFU protocol is selected explicitly (--benchmark tofu_tiny) or by the shortcut
--benchmark tofu --model tiny; both are one configuration, recorded as tofu with model tiny."""

import pytest

from atwu_fast.config.args import parse_config
from atwu_fast.suites import make_suite
from atwu_fast.suites.tofu.tiny import TinyTofuSuite
from atwu_fast.unlearn.experiment import SHORTCUTS, ExperimentConfig


def config(*argv):
    return parse_config(ExperimentConfig, list(argv), prog="t", description="", shortcuts=SHORTCUTS)


def test_tofu_tiny_is_the_tiny_protocol_and_the_shortcut_is_the_same():
    explicit, shortcut = config("--benchmark", "tofu_tiny"), config("--benchmark", "tofu", "--model", "tiny")
    assert explicit == shortcut
    assert (explicit.benchmark.name, explicit.benchmark.model) == ("tofu", "tiny")
    assert type(make_suite(explicit)) is TinyTofuSuite


def test_tofu_tiny_with_a_model_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config("--benchmark", "tofu_tiny", "--model", "some/model")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --benchmark tofu_tiny fine-tunes its own tiny models: "
                                               "leave --model unset")
