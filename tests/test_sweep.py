"""The sweep command: grids are valid configs, aggregation is mean ± sample std, resume skips."""

import json

import pytest

from atwu_fast import sweep
from atwu_fast.config import ExperimentConfig
from atwu_fast.configtools import merge
from atwu_fast.methods import METHODS


@pytest.mark.parametrize("name", sorted(sweep.GRIDS))
def test_every_grid_entry_is_a_valid_config(name):
    grid = sweep.GRIDS[name]
    labels = [label for label, _, _ in grid.methods]
    assert len(labels) == len(set(labels))
    for variant in grid.variants.values():
        for seed in grid.seeds:
            base = merge(ExperimentConfig(), sweep.dotted_to_nested({**grid.base, **variant,
                                                                     **sweep.seed_overrides(seed)}))
            assert base.data.seed == base.model.seed == base.train.seed == seed
            for _label, method, over in grid.methods:
                assert method in METHODS
                for lr in grid.lrs:
                    cfg = merge(base, sweep.dotted_to_nested({**over, "train.lr": lr}))
                    assert cfg.train.lr == lr


def test_mean_std_and_tables():
    assert sweep.mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
    assert sweep.mean_std([0.5]) == "0.500"
    assert sweep.mean_std([None, float("nan")]) == "-"
    grid = sweep.Grid([("a", "atwu", {})], lrs=[1e-3], seeds=[0, 1])
    runs = {}
    for seed, auc in ((0, 0.6), (1, 0.8)):
        key = sweep.run_key("default", seed, 1e-3, "a")
        runs[key] = {"metrics": {"forget_quality": 1e-2, "model_utility": 0.5, "span_auroc": auc,
                                 "span_auroc_avg": auc, "span_ap": 0.3, "span_auroc_all": 0.5}}
    text = sweep.tables("t", grid, runs)
    assert "| a | 2 | -2.000 ± 0.000 | 0.500 ± 0.000 | 0.700 ± 0.141 |" in text


def test_load_runs_resumes(tmp_path):
    path = tmp_path / "runs.jsonl"
    sweep.append(path, {"key": "k1", "metrics": {"x": float("nan")}})
    sweep.append(path, {"key": "k2", "metrics": {}})
    runs = sweep.load_runs(path)
    assert set(runs) == {"k1", "k2"}
    assert json.loads(path.read_text().splitlines()[0])["metrics"]["x"] is None


def test_list_exits_cleanly(capsys):
    assert sweep.main(["--list"]) == 0
    assert "headline" in capsys.readouterr().out
    assert sweep.main(["nonexistent"]) == 2


def test_split_reference_accepts_both_shapes():
    import numpy as np

    ref, r = sweep.split_reference({"models": {}, "rankers": {}, "retain_forget_truth_ratios": [0.5, 0.7]})
    assert "retain_forget_truth_ratios" not in ref and np.allclose(r, [0.5, 0.7])
    ref2, r2 = sweep.split_reference(({"models": {}}, np.ones(2)))
    assert ref2 == {"models": {}} and np.allclose(r2, 1)


def test_logfit_ablation_base_is_the_atwu_logfit_variant():
    """The ablations run plain `atwu` with atwu_logfit's settings spelled out; they must stay equal
    (overriding a variant's fixed field would be silently ignored)."""
    from atwu_fast.methods import variant_params

    cfg = merge(ExperimentConfig(), sweep.dotted_to_nested(sweep.LOGFIT))
    assert variant_params("atwu", cfg.atwu) == variant_params("atwu_logfit", ExperimentConfig().atwu)
    for label, method, over in sweep.LOGFIT_ABLATIONS[2:]:
        assert method == "atwu" and over != sweep.LOGFIT, label
