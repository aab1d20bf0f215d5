"""The tuned-values files the package ships are usable as they stand: every entry names a registered method,
sets only options that method's search declares, inside the declared range, and merges into a valid config;
every entry keeps the study (command, objective, fresh-seed result) behind it."""

import json

import pytest

from atwu_fast.config.options import dotted_to_nested, merge
from atwu_fast.config.search import Choice, Float, Int
from atwu_fast.methods import METHODS
from atwu_fast.suites import SUITES, TinyTofuSuite
from atwu_fast.unlearn.experiment import ExperimentConfig

SHIPPED = sorted({suite.tuned_file for suite in (*SUITES.values(), TinyTofuSuite) if suite.tuned_file})


def test_a_tuned_values_file_is_shipped():
    """The embedded benchmark and TOFU at laptop scale each ship one."""
    assert len(SHIPPED) == 2 and all(path.is_file() for path in SHIPPED)


def inside(space, value) -> bool:
    if isinstance(space, Choice):
        return value in space.options
    kind = float if isinstance(space, Float) else int
    assert isinstance(space, (Float, Int)) and isinstance(value, (int, float))
    return space.low <= kind(value) <= space.high


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_no_shipped_study_tuned_on_a_seed_the_comparison_reports(path):
    """The comparison grids report the tune command's fresh seeds; a value tuned on one of them would be
    judged on its own training data."""
    import shlex

    from atwu_fast.tune.config import TuneOptions

    fresh = set(TuneOptions().eval_seeds)
    for method, study in json.loads(path.read_text())["studies"].items():
        args = shlex.split(study["command"])
        tuned_on = {int(s) for s in args[args.index("--tune.seeds") + 1].split(",")} if "--tune.seeds" in args \
            else set(TuneOptions().seeds)
        assert not tuned_on & fresh, f"{method} was tuned on seeds {sorted(tuned_on)}"


def test_tiny_tofu_values_apply_to_the_tiny_models_only():
    """Values tuned on the laptop-scale TOFU protocol belong to its tiny models, not to a real TOFU model."""
    from atwu_fast.suites import make_suite

    def suite(model):
        return make_suite(merge(ExperimentConfig(), dotted_to_nested(
            {"benchmark.name": "tofu", "benchmark.data_dir": "unused", "benchmark.model": model})))

    shipped = json.loads(TinyTofuSuite.tuned_file.read_text())["methods"]
    assert suite("tiny").tuned() == shipped and shipped
    assert suite("org/some-model").tuned() == {}


@pytest.mark.parametrize("grid_name, path", [("compare", SUITES["synthetic"].tuned_file),
                                             ("compare_tofu", TinyTofuSuite.tuned_file),
                                             ("compare_tofu_nearest", TinyTofuSuite.tuned_file)],
                         ids=["synthetic", "tofu", "tofu-nearest"])
def test_each_comparison_counts_seeds_at_the_level_its_studies_tuned_for(grid_name, path):
    import shlex

    from atwu_fast.tune.config import TuneOptions
    from studies import sweep

    (shown,) = [c[0] for c in sweep.GRIDS[grid_name].columns if c[0].startswith("FQ ≥ ")]
    for method, study in json.loads(path.read_text())["studies"].items():
        args = shlex.split(study["command"])
        level = float(args[args.index("--tune.fq_level") + 1]) if "--tune.fq_level" in args else TuneOptions().fq_level
        assert shown == f"FQ ≥ {level:g}", method
