"""`python -m atwu_fast.tune` on a tiny embedded benchmark: a 3-trial study, its resumption, a pruned
diverged trial, the report, the re-evaluation on fresh seeds, and recording the best setting."""

import json

import optuna
import pytest
from test_cli import TINY  # tests/e2e is on sys.path

import atwu_fast.tune.study as study_module
from atwu_fast.train.trainer import DivergenceError
from atwu_fast.tune.__main__ import main

pytestmark = pytest.mark.slow
ARGS = TINY + ["--train.steps", "2", "--eval.eval_every", "0", "--method", "npo", "--tune.seeds", "1",
               "--tune.eval_seeds", "2", "--tune.startup_trials", "2"]  # later flags win


def test_study_runs_resumes_prunes_reports_and_records(tmp_path, monkeypatch):
    out, cache, tuned = tmp_path / "study", str(tmp_path / "cache"), tmp_path / "tuned.json"
    calls = []
    real = study_module.run_method

    def diverge_second(name, run):
        calls.append(name)
        if len(calls) == 2:  # the second trial's run diverges
            raise DivergenceError("non-finite loss at step 1")
        return real(name, run)

    monkeypatch.setattr(study_module, "run_method", diverge_second)
    assert main(ARGS + ["--trials", "3", "--output-dir", str(out), "--cache-dir", cache]) == 0
    storage = f"sqlite:///{out / 'study.db'}"
    first = optuna.load_study(study_name="synthetic-npo", storage=storage).trials
    assert [t.state.name for t in first] == ["COMPLETE", "PRUNED", "COMPLETE"]
    best = json.loads((out / "best.json").read_text())
    assert best["pruned"] == 1 and set(best["params"]) == {"train.lr", "npo.gamma", "npo.beta"}
    assert list(best["fresh_seeds"]) == ["2"] and "model_utility" in best["fresh_seeds"]["2"]
    assert 1e-4 <= best["params"]["train.lr"] <= 2e-2  # inside the declared range
    report = (out / "report.md").read_text()
    assert "Best trial" in report and "importance" in report and (out / "tradeoff.png").is_file()

    assert main(ARGS + ["--trials", "5", "--output-dir", str(out), "--cache-dir", cache,
                        "--tune.record", str(tuned)]) == 0
    resumed = optuna.load_study(study_name="synthetic-npo", storage=storage).trials
    assert len(resumed) == 5 and [t.params for t in resumed[:3]] == [t.params for t in first]  # continued
    recorded = json.loads(tuned.read_text())
    assert recorded["methods"]["npo"] == json.loads((out / "best.json").read_text())["params"]
    assert "python -m atwu_fast.tune" in recorded["studies"]["npo"]["command"]
    fresh = recorded["studies"]["npo"]["fresh"]  # fresh seeds generate: the leak metrics are summarised
    assert {"model_utility", "leak_worst", "leak_retain"} <= set(fresh) and fresh["leak_worst"]["n"] == 1


def test_tuning_seeds_must_differ_from_the_fresh_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--method", "npo", "--tune.seeds", "1", "--tune.eval_seeds", "1,2", "--output-dir", str(tmp_path)])
    assert exc.value.code == 2 and "fresh" in capsys.readouterr().err


def test_objective_ranks_feasible_trials_above_infeasible_ones():
    from types import SimpleNamespace

    from atwu_fast.tune.study import objective_value

    opts = SimpleNamespace(objective="mu_at_fq", fq_level=0.05)
    feasible = objective_value({"forget_quality": 0.06, "model_utility": 0.01}, {}, opts)
    near = objective_value({"forget_quality": 0.04, "model_utility": 0.99}, {}, opts)
    far = objective_value({"forget_quality": 1e-10, "model_utility": 0.99}, {}, opts)
    assert feasible == 0.01 and feasible > near > far
    es = SimpleNamespace(objective="es_gap", fq_level=0.05)
    ref = {"models": {"retain model": {"extraction_strength": 0.2}}}
    assert objective_value({"extraction_strength": 0.5}, ref, es) == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="retain model"):
        objective_value({"extraction_strength": 0.5}, {}, es)
