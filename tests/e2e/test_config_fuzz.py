"""Property-based: malformed configs and command lines give exit code 2 and one line — never a
traceback — and nothing is written."""

import dataclasses

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atwu_fast.config.args import parse_config
from atwu_fast.config.options import flat_fields
from atwu_fast.unlearn.__main__ import main
from atwu_fast.unlearn.experiment import SHORTCUTS, ExperimentConfig

FIELDS = [name for name, *_ in flat_fields(ExperimentConfig)]
SECTIONS = sorted({n.split(".")[0] for n in FIELDS if "." in n})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3))
keys = st.one_of(st.sampled_from(SECTIONS), st.sampled_from([n.split(".")[-1] for n in FIELDS]), st.text(max_size=8))
configs = st.recursive(scalars, lambda children: st.dictionaries(keys, children, max_size=4), max_leaves=12)


def parse(argv):
    return parse_config(ExperimentConfig, argv, prog="t", description="t", shortcuts=SHORTCUTS)


def assert_clean_failure_or_valid(argv, capsys):
    try:
        cfg = parse(argv)
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return None
    assert isinstance(cfg, ExperimentConfig)
    for section in dataclasses.fields(cfg):  # a config that parses also validates
        value = getattr(cfg, section.name)
        if hasattr(value, "validate"):
            value.validate()
    return cfg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=configs)
def test_random_yaml_configs_fail_cleanly(tmp_path, capsys, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_clean_failure_or_valid(["--config", str(path)], capsys)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.lists(st.tuples(st.sampled_from(["--" + n for n in FIELDS] + list(SHORTCUTS) + ["--bogus"]),
                                st.text(alphabet="0123456789.-eaxnoTrue,", max_size=6)), max_size=4))
def test_random_command_lines_fail_cleanly(capsys, flags):
    argv = [x for flag, value in flags for x in (flag, value)]
    assert_clean_failure_or_valid(argv, capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_garbage_config_files_never_write_output(tmp_path, capsys, text):
    path = tmp_path / "c.yaml"
    path.write_text(text + "\ntrain: {lr: -1}\n")  # always invalid: a negative learning rate at least
    out = tmp_path / "out"
    try:
        main(["--config", str(path), "--output-dir", str(out)])
        raise AssertionError("an invalid config was accepted")
    except SystemExit as exc:
        assert exc.code == 2
    assert not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
