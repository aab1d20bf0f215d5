"""The tuned-values files the package ships are usable as they stand: every entry names a registered method,
sets only options that method's search declares, inside the declared range, and merges into a valid config;
every entry keeps the study (command, objective, fresh-seed result) behind it."""

import json

import pytest

from atwu_fast.config.options import dotted_to_nested, merge
from atwu_fast.config.search import Choice, Float, Int
from atwu_fast.methods import METHODS
from atwu_fast.suites import SUITES
from atwu_fast.unlearn.experiment import ExperimentConfig

SHIPPED = sorted({suite.tuned_file for suite in SUITES.values() if getattr(suite, "tuned_file", None)})


def test_a_tuned_values_file_is_shipped():
    assert SHIPPED and all(path.is_file() for path in SHIPPED)


def inside(space, value) -> bool:
    if isinstance(space, Choice):
        return value in space.options
    kind = float if isinstance(space, Float) else int
    assert isinstance(space, (Float, Int)) and isinstance(value, (int, float))
    return space.low <= kind(value) <= space.high


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_every_shipped_entry_is_a_valid_in_range_setting_with_its_study(path):
    data = json.loads(path.read_text())
    assert data["methods"], "an empty tuned-values file"
    for method, values in data["methods"].items():
        assert method in METHODS, method
        space = METHODS[method].search_space()
        for key, value in values.items():
            assert key in space, f"{method}: {key} is not among its searched options {sorted(space)}"
            assert inside(space[key], value), f"{method}: {key}={value} outside {space[key]}"
        merge(ExperimentConfig(), dotted_to_nested(values), where=f"{path.name}: {method}")  # raises on an unknown option
        study = data["studies"][method]
        assert study["command"].startswith("python -m atwu_fast.tune ") and f"--method {method}" in study["command"]
        assert "model_utility" in study["fresh"] and "log10_forget_quality" in study["fresh"]
