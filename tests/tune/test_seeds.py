"""What a tuning seed and a quick trial change on each benchmark: real options, and the ones that matter."""

import pytest

from atwu_fast.config.options import merge
from atwu_fast.unlearn.experiment import ExperimentConfig


@pytest.mark.parametrize("bench, extra, quick_key", [
    ("synthetic", {}, "eval.generate"),
    ("tofu", {"benchmark": {"model": "tiny"}}, "tofu.generate"),
    ("tofu", {"benchmark": {"model": "some/model"}}, "tofu.generate"),
])
def test_seed_and_quick_overrides_are_real_options_that_change_the_run(bench, extra, quick_key):
    """A tuning seed changes the unlearning order and, where the suite builds its own models, their
    initialisation (a fresh tiny TOFU pair per seed); a quick trial turns generation off."""
    from atwu_fast.config.options import dotted_to_nested as nested
    from atwu_fast.suites import make_suite

    extra = {**extra, "benchmark": {"name": bench, **extra.get("benchmark", {})}}
    cfg = merge(ExperimentConfig(), extra)
    suite = make_suite(cfg)
    seeded = merge(cfg, nested({**suite.seed_overrides(7), **suite.quick_overrides()}))
    assert seeded.train.seed == 7 and cfg.train.seed != 7
    if bench == "synthetic":
        assert (seeded.data.seed, seeded.model.seed) == (7, 7)
    if extra["benchmark"].get("model") == "tiny":
        assert seeded.tiny.model.seed == 7 and type(suite).__name__ == "TinyTofuSuite"
    section, name = quick_key.split(".")
    assert getattr(getattr(cfg, section), name) is True and getattr(getattr(seeded, section), name) is False
