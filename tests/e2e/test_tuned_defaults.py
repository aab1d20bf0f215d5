"""Tuned defaults: a benchmark's tuned values reach each method's run, except what the user set and
unless ``--tuned false``; the run's config.yaml records what was used."""

import json

import pytest
import yaml
from test_cli import TINY as FIXED  # tests/e2e is on sys.path

from atwu_fast.suites.synthetic import SyntheticSuite
from atwu_fast.unlearn.__main__ import main

pytestmark = pytest.mark.slow
TINY = FIXED + ["--tuned", "true"]  # later flags win


@pytest.fixture
def tuned_file(tmp_path, monkeypatch):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"methods": {"npo": {"train.lr": 0.0042, "npo.beta": 0.37},
                                            "grad_diff": {"train.lr": 0.0007}}}))
    monkeypatch.setattr(SyntheticSuite, "tuned_file", path)
    return path


def used(out, method) -> dict:
    return yaml.safe_load((out / method / "config.yaml").read_text())


def test_tuned_values_apply_per_method_and_yield_to_explicit_flags(tmp_path, tuned_file):
    out, cache = tmp_path / "a", str(tmp_path / "cache")
    assert main(TINY + ["--methods", "npo,grad_diff,wga", "--npo.beta", "0.2", "--output-dir", str(out),
                        "--cache-dir", cache]) == 0
    npo, gd, wga = used(out, "npo"), used(out, "grad_diff"), used(out, "wga")
    assert npo["train"]["lr"] == 0.0042 and npo["npo"]["beta"] == 0.2  # the user's --npo.beta wins
    assert gd["train"]["lr"] == 0.0007
    assert wga["train"]["lr"] == 1e-3  # no tuned entry: the option's default

    off = tmp_path / "b"
    assert main(TINY + ["--method", "npo", "--tuned", "false", "--output-dir", str(off), "--cache-dir", cache]) == 0
    assert used(off, "npo")["train"]["lr"] == 1e-3 and used(off, "npo")["npo"]["beta"] != 0.37
    explicit = tmp_path / "c"
    assert main(TINY + ["--method", "npo", "--train.lr", "0.002", "--output-dir", str(explicit),
                        "--cache-dir", cache]) == 0
    assert used(explicit, "npo")["train"]["lr"] == 0.002 and used(explicit, "npo")["npo"]["beta"] == 0.37
