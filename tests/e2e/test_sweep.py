"""The sweep command: grids are valid configs, aggregation is mean ± sample std, resume skips."""

import json
from dataclasses import replace

import pytest

from atwu_fast.config.options import merge
from atwu_fast.methods import METHODS
from atwu_fast.unlearn.experiment import ExperimentConfig
from studies import sweep


@pytest.mark.parametrize("name", sorted(sweep.GRIDS))
def test_every_grid_entry_is_a_valid_config(name):
    grid = sweep.GRIDS[name]
    labels = [label for label, _, _ in grid.methods]
    assert len(labels) == len(set(labels))
    for variant in grid.variants.values():
        for seed in grid.seeds:
            base = merge(ExperimentConfig(), sweep.dotted_to_nested(sweep.run_overrides(grid, variant, seed)))
            keys = sweep.seed_keys(grid)  # a seed sets the initialisation of the models it trains and the batch order
            assert "train.seed" in keys and any(k.endswith("model.seed") for k in keys), keys
            for key in keys:
                section, field = key.rsplit(".", 1)
                node = base
                for part in section.split("."):
                    node = getattr(node, part)
                assert getattr(node, field) == seed, key
            generates = base.tofu.generate if base.benchmark.name == "tofu" else base.eval.generate
            assert generates != grid.quick  # quick grids skip generation, the others generate (J_W needs answers)
            assert set(grid.baselines) <= set(labels)
            for label, method, over in grid.methods:
                assert method in METHODS
                for lr in grid.lrs:
                    cfg, _ = sweep.run_config(base, NoTunedValues(), method, over, lr, label)
                    assert cfg.train.lr == (base.train.lr if lr == sweep.TUNED else lr)


class NoTunedValues:
    def tuned(self):
        return {}


class TunedValues:
    def tuned(self):
        return {"wga": {"train.lr": 0.02, "wga.beta": 3.0, "wga.gamma": 0.5}}


def test_tuned_runs_take_the_methods_tuned_values_and_every_override_wins():
    base = merge(ExperimentConfig(), sweep.dotted_to_nested({"eval.generate": True}))
    cfg, used = sweep.run_config(base, TunedValues(), "wga", {"wga.beta": 1.5}, sweep.TUNED, "wga")
    assert (cfg.train.lr, cfg.wga.beta, cfg.wga.gamma, cfg.eval.generate) == (0.02, 1.5, 0.5, True)
    assert used == {"train.lr": 0.02, "wga.gamma": 0.5}
    cfg, used = sweep.run_config(base, TunedValues(), "npo", {}, sweep.TUNED, "npo")  # nothing tuned: defaults
    assert used == {} and cfg.train.lr == ExperimentConfig().train.lr
    cfg, used = sweep.run_config(base, TunedValues(), "wga", {}, 3e-3, "wga")  # a grid lr: no tuned values
    assert used == {} and (cfg.train.lr, cfg.wga.beta) == (3e-3, ExperimentConfig().wga.beta)


@pytest.mark.parametrize("name, bench_name", [("compare", "synthetic"), ("compare_tofu", "tofu")])
def test_compare_grids_are_every_method_on_the_tune_commands_fresh_seeds(name, bench_name):
    from atwu_fast.tune.config import TuneOptions

    grid = sweep.GRIDS[name]
    assert grid.base.get("benchmark.name", "synthetic") == bench_name
    assert [method for _, method, _ in grid.methods] == list(METHODS)
    assert grid.lrs == [sweep.TUNED] and grid.intervals
    assert grid.seeds == TuneOptions().eval_seeds and not set(grid.seeds) & set(TuneOptions().seeds)
    assert not grid.quick  # J_W needs answers: generation on
    assert set(grid.controls) <= {label for label, _, _ in grid.methods}
    assert {"J_W", "J_avg"} <= {column[0] for column in grid.columns}


def test_interval_tables_show_the_95_percent_t_interval_and_the_tuned_values():
    grid = sweep.Grid([("w", "wga", {}), ("n", "npo", {})], lrs=[sweep.TUNED], seeds=[0, 1],
                      columns=[("MU", lambda m: m["model_utility"])], intervals=True)
    runs = {}
    for seed, mu in ((0, 0.6), (1, 0.8)):
        runs[sweep.run_key("default", seed, sweep.TUNED, "w")] = {
            "tuned": {"train.lr": 0.0153, "wga.beta": 2}, "metrics": {"model_utility": mu}}
        runs[sweep.run_key("default", seed, sweep.TUNED, "n")] = {"tuned": {}, "metrics": {"model_utility": 0.5}}
    text = sweep.tables("t", grid, runs)
    # n = 2: half-width t(0.975, 1) · s / √2 = 12.706 · 0.1414 / 1.414 = 1.271
    assert "| w | 2 | lr 0.0153, beta 2 | 0.700 [-0.571, 1.971] |" in text
    assert "| n | 2 | defaults | 0.500 [0.500, 0.500] |" in text
    assert "mean [95 % t-interval]" in text


def test_pareto_keeps_the_points_no_other_beats_in_both_coordinates():
    points = {"a": (-1.0, 0.8), "b": (-3.0, 0.9), "c": (-2.0, 0.7), "d": (-0.5, 0.2), "e": (None, 0.95)}
    assert sweep.pareto(points) == ["b", "a", "d"]  # c is beaten by a in both; e has no forget quality
    assert sweep.pareto({}) == []


def test_reached_column_is_the_share_of_seeds_at_the_level():
    name, column, count = sweep.reached(0.05)
    assert name == "FQ ≥ 0.05"
    assert [column({"forget_quality": q}) for q in (0.049, 0.05, 0.9)] == [0.0, 1.0, 1.0]
    assert column({}) is None and count([1.0, 0.0, None, 1.0]) == "2/3" and count([None]) == "-"
    grid = sweep.Grid([("w", "wga", {}), ("n", "npo", {})], lrs=[sweep.TUNED], seeds=[0, 1],
                      columns=[sweep.reached(0.05)], intervals=True)
    runs = {sweep.run_key("default", s, sweep.TUNED, label): {"tuned": {}, "metrics": {"forget_quality": q,
                                                                                         "model_utility": mu}}
            for s, label, q, mu in ((0, "w", 0.1, 0.8), (1, "w", 0.01, 0.8), (0, "n", 0.2, 0.5), (1, "n", 0.3, 0.5))}
    text = sweep.tables("t", grid, runs)
    assert "| w | 2 | defaults | 1/2 |" in text  # one seed of two reaches it
    assert "| n | 2 | defaults | 2/2 |" in text
    assert "mean MU): w, n" in text  # w keeps more utility, n forgets more: both on the frontier
    assert "without the controls" not in text
    text = sweep.tables("t", replace(grid, controls=("n",)), runs)
    assert "Frontier without the controls (n): w" in text


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
    from atwu_fast.methods import get_method

    cfg = merge(ExperimentConfig(), sweep.dotted_to_nested(sweep.LOGFIT))
    assert get_method("atwu").params(cfg.atwu) == get_method("atwu_logfit").params(ExperimentConfig().atwu)
    for label, method, over in sweep.LOGFIT_ABLATIONS[2:]:
        assert method == "atwu" and over != sweep.LOGFIT, label


def test_paired_tables_difference_each_seed_against_the_baseline():
    """Δ is per seed (method − baseline on the same seed), its CI a t-interval, "as good" a count."""
    grid = sweep.Grid([("base", "atwu", {}), ("new", "atwu", {})], lrs=[1e-2], seeds=[0, 1, 2], baseline="base")
    runs = {}
    # baseline MU differs a lot between seeds; the method is exactly 0.01 / 0.02 / 0.03 above it
    for seed, (mu_b, fq_b) in enumerate(((0.5, 1e-2), (0.7, 1e-3), (0.6, 1e-2))):
        runs[sweep.run_key("default", seed, 1e-2, "base")] = {"metrics": {"model_utility": mu_b,
                                                                          "forget_quality": fq_b}}
        runs[sweep.run_key("default", seed, 1e-2, "new")] = {"metrics": {"model_utility": mu_b + 0.01 * (seed + 1),
                                                                         "forget_quality": fq_b / 10}}
    mean, std, half, nonneg = sweep.paired_deltas([0.5, 0.7, 0.6], [0.51, 0.72, 0.63])
    assert mean == pytest.approx(0.02) and std == pytest.approx(0.01) and nonneg == 3
    assert half == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, rel=1e-5)
    text = sweep.paired_tables(grid, runs)
    row = next(line for line in text.splitlines() if line.startswith("| 0.01 | new |"))
    assert "| -1.000 ± 0.000 |" in row and "| 0/3 |" in row  # FQ one decade worse on every seed
    assert "| +0.020 ± 0.010 | [-0.005, +0.045] | 3/3 |" in row
    assert sweep.paired_deltas([0.5], [0.6]) is None
    assert sweep.paired_tables(sweep.Grid([("a", "atwu", {})], lrs=[1e-3], seeds=[0]), {}) == ""


def test_paired_leak_counts_the_seeds_where_the_method_leaks_no_more():
    """J_W is better lower: its 'as good' column counts Δ ≤ 0, while log10 FQ and MU count Δ ≥ 0."""
    grid = sweep.Grid([("base", "atwu", {}), ("new", "atwu", {})], lrs=[1e-2], seeds=[0, 1, 2], baseline="base")
    runs = {}
    for seed, (jw_b, jw_n) in enumerate(((0.10, 0.05), (0.20, 0.20), (0.10, 0.16))):
        for label, jw in (("base", jw_b), ("new", jw_n)):
            runs[sweep.run_key("default", seed, 1e-2, label)] = {"metrics": {"leak_worst": jw, "model_utility": 0.5,
                                                                            "forget_quality": 1e-2}}
    row = next(line for line in sweep.paired_tables(grid, runs).splitlines() if line.startswith("| 0.01 | new |"))
    assert row.endswith("| +0.003 ± 0.055 | [-0.133, +0.140] | 2/3 |")  # lower on seed 0, equal on 1, higher on 2


def test_shards_partition_the_seed_pairs():
    grid = sweep.GRIDS["robustness"]
    everything = sweep.shard_pairs(grid, (0, 1))
    parts = [sweep.shard_pairs(grid, (k, 4)) for k in range(4)]
    assert sorted(map(repr, sum(parts, []))) == sorted(map(repr, everything))
    assert all(parts) and len(everything) == len(grid.variants) * len(grid.seeds)
    assert sweep.main(["smoke", "--shard", "2/2"]) == 2 and sweep.main(["smoke", "--shard", "x"]) == 2


def test_frontier_mu_is_the_best_utility_at_or_above_a_forget_quality():
    # (log10 FQ, MU) per lr, increasing lr: forgetting rises, utility falls, FQ not monotone at the end
    pts = [(-12.0, 0.86), (-8.0, 0.83), (-4.0, 0.65), (-2.0, 0.53), (-3.0, 0.40)]
    assert sweep.frontier_mu(pts, -12.0) == pytest.approx(0.86)
    assert sweep.frontier_mu(pts, -10.0) == pytest.approx(0.845)  # halfway along the first segment
    assert sweep.frontier_mu(pts, -4.0) == pytest.approx(0.65)
    assert sweep.frontier_mu(pts, -3.0) == pytest.approx(0.59)  # crossing of (-4, .65)-(-2, .53), not the last run
    assert sweep.frontier_mu(pts, -2.5) == pytest.approx(0.56)
    assert sweep.frontier_mu(pts, -1.0) is None  # never forgets that much
    assert sweep.frontier_mu([(-5.0, 0.7)], -6.0) == 0.7


def test_frontier_tables_pair_methods_at_equal_forget_quality():
    grid = sweep.Grid([("base", "atwu", {}), ("new", "atwu", {})], lrs=[1e-3, 1e-2], seeds=[0, 1], baseline="base")
    runs = {}
    for seed in (0, 1):
        for lr, (fq, mu) in ((1e-3, (1e-12, 0.86)), (1e-2, (1e-2, 0.50))):
            runs[sweep.run_key("default", seed, lr, "base")] = {"metrics": {"forget_quality": fq, "model_utility": mu}}
            # the new method: the same utilities, but one decade more forgetting at each lr
            runs[sweep.run_key("default", seed, lr, "new")] = {"metrics": {"forget_quality": fq * 10,
                                                                            "model_utility": mu}}
    row = next(line for line in sweep.frontier_tables(grid, runs).splitlines() if line.startswith("| new |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    levels = list(sweep.FRONTIER_LEVELS)
    # at log10 FQ >= -4 the baseline's best MU is 0.86 - 0.36*8/10 = 0.572, the new one's 0.86 - 0.36*7/10 = 0.608
    assert cells[levels.index(-4.0)].startswith("+0.036 [")
    assert cells[levels.index(-12.0)].startswith("+0.000 [") and cells[levels.index(-12.0)].endswith("2/2 (reach 2/2)")
    assert cells[levels.index(-2.0)].startswith("+0.036 [")  # new reaches -2 inside the range, base only at its end


def test_frontier_tables_count_reach_and_skip_diverged_runs():
    """A seed whose run has no finite FQ/MU (diverged; NaN is stored as null) is left out, not a crash,
    and each cell says how many seeds reach the level for the baseline and for the method."""
    grid = sweep.Grid([("base", "atwu", {}), ("new", "atwu", {})], lrs=[1e-3, 1e-2], seeds=[0, 1, 2],
                      baseline="base")
    runs = {}
    for seed in (0, 1, 2):
        for lr, (fq, mu) in ((1e-3, (1e-12, 0.86)), (1e-2, (1e-2, 0.50))):
            runs[sweep.run_key("default", seed, lr, "base")] = {"metrics": {"forget_quality": fq, "model_utility": mu}}
            # the new method forgets less: it never reaches log10 FQ -2 (ends at -3)
            runs[sweep.run_key("default", seed, lr, "new")] = {"metrics": {"forget_quality": fq / 10,
                                                                            "model_utility": mu}}
    runs[sweep.run_key("default", 2, 1e-2, "new")]["metrics"]["model_utility"] = None  # diverged
    row = next(line for line in sweep.frontier_tables(grid, runs).splitlines() if line.startswith("| new |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    levels = list(sweep.FRONTIER_LEVELS)
    assert cells[levels.index(-2.0)] == "- (reach 3/0)"
    assert cells[levels.index(-4.0)].endswith("0/2 (reach 3/2)")  # seed 2 left out, less utility than base


def test_methods_with_their_own_learning_rates_run_and_pair_on_their_own_curves():
    """A method with its own lr range is run at those lrs only, and its frontier uses them: a baseline
    that needs 10× smaller lrs for the same (FQ, MU) curve ties with the other method at equal forget quality."""
    grid = sweep.Grid([("base", "grad_diff", {}), ("new", "atwu", {})], lrs=[1e-3, 1e-2], seeds=[0, 1],
                      baseline="base", method_lrs={"base": [1e-4, 1e-3]})
    assert grid.lrs_of("base") == [1e-4, 1e-3] and grid.lrs_of("new") == [1e-3, 1e-2]
    assert grid.all_lrs == [1e-3, 1e-2, 1e-4] and grid.runs == 8
    runs = {}
    for seed in (0, 1):
        for (lr_b, lr_n), (fq, mu) in zip(((1e-4, 1e-3), (1e-3, 1e-2)), ((1e-12, 0.86), (1e-2, 0.50))):
            runs[sweep.run_key("default", seed, lr_b, "base")] = {"metrics": {"forget_quality": fq, "model_utility": mu}}
            runs[sweep.run_key("default", seed, lr_n, "new")] = {"metrics": {"forget_quality": fq, "model_utility": mu}}
    row = next(line for line in sweep.frontier_tables(grid, runs).splitlines() if line.startswith("| new |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert all(c.startswith("+0.000 [") and c.endswith("2/2 (reach 2/2)") for c in cells), cells
    paired = sweep.paired_tables(grid, runs)
    assert "| 0.001 | new | 2 |" in paired  # the one lr both run at
    assert "| 0.01 | new |" not in paired and "| 0.0001 | new |" not in paired


def test_checkpoint_trajectory_pairs_each_span_checkpoint_with_that_steps_statistics(tmp_path):
    history = {"steps": [{"step": s, "forget_nll": 0.1 * s, "retain_nll": 0.5, "score_frac": 0.01 * s, "lr": 1e-3}
                         for s in range(1, 21)],
               "span_checkpoints": [{"step": 0, "span_auroc": 0.9, "span_auroc_all": 0.8, "span_ap": 0.5},
                                    {"step": 10, "span_auroc": 0.85, "span_auroc_all": 0.7},
                                    {"step": 20, "span_auroc": 0.7, "span_auroc_all": 0.6}]}
    path = tmp_path / "history.json"
    path.write_text(json.dumps(history))
    trajectory = sweep.checkpoint_trajectory(path)
    assert [c["step"] for c in trajectory] == [0, 10, 20]
    assert trajectory[0] == {"step": 0, "span_auroc": 0.9, "span_auroc_all": 0.8}  # before the first step
    assert trajectory[2] == {"step": 20, "span_auroc": 0.7, "span_auroc_all": 0.6, "forget_nll": 2.0,
                             "retain_nll": 0.5, "score_frac": 0.2}
    assert sweep.checkpoint_trajectory(tmp_path / "missing.json") == []


def test_trajectory_tables_average_each_checkpoint_over_seeds():
    grid = sweep.Grid([("a", "atwu", {}), ("b", "wga", {})], lrs=[1e-3], seeds=[0, 1])
    runs = {}
    for seed, shift in ((0, 0.0), (1, 0.1)):
        runs[sweep.run_key("default", seed, 1e-3, "a")] = {"metrics": {}, "checkpoints": [
            {"step": 10, "span_auroc": 0.8 + shift, "forget_nll": 1.0 + 10 * shift, "score_frac": 0.5},
            {"step": 20, "span_auroc": 0.6 + shift, "forget_nll": 3.0, "score_frac": 0.7 + shift}]}
        runs[sweep.run_key("default", seed, 1e-3, "b")] = {"metrics": {}, "checkpoints": [
            {"step": 10, "span_auroc": 0.3, "forget_nll": 2.0}]}
    text = sweep.trajectory_tables(grid, runs)
    assert "| method | n | step 10 | step 20 |" in text
    assert "| a | 2 | 0.850 (1.5, 0.50) | 0.650 (3.0, 0.75) |" in text
    assert "| b | 2 | 0.300 (2.0) | - |" in text  # no scores: no share; no checkpoint at 20
    assert sweep.trajectory_tables(grid, {k: {**r, "checkpoints": []} for k, r in runs.items()}) == ""


def test_tuned_except_lr_reads_the_shipped_file_even_when_the_suite_is_patched():
    """Grids built at import take the shipped tuned values; the test session switches the suite's file off
    (conftest), and the module must not depend on which test imported it first."""
    from atwu_fast.suites.synthetic import TUNED_FILE, SyntheticSuite

    assert SyntheticSuite.tuned_file is None  # the autouse fixture is active
    shipped = json.loads(TUNED_FILE.read_text())["methods"]
    values = sweep.tuned_except_lr("atwu_logfit")
    assert values == {k: v for k, v in shipped["atwu_logfit"].items() if k != "train.lr"} and values
