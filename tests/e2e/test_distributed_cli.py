"""`torchrun --nproc_per_node 2 -m atwu_fast.unlearn` end to end on CPU (gloo): DDP and FSDP runs
train on shards, evaluate their share of the rows, and write the same results as one process."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from fixtures.tiny import TOFU_DIR, save_tiny_model
from safetensors.torch import load_file
from test_cli import TINY  # tests/ is on sys.path
from test_real_report import TOFU

from atwu_fast.model.distributed import GROUP_OUTLIVED_SHUTDOWN
from atwu_fast.unlearn.__main__ import main

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

METHODS = "atwu,npo"


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_cli")
    out = root / "single"
    assert main(TINY + ["--methods", METHODS, "--output-dir", str(out), "--cache-dir", str(root / "cache")]) == 0
    return root, json.loads((out / "results.json").read_text())


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # accelerate configured for FSDP; the engine's default --efficiency.parallel auto follows it
    "accelerate-fsdp": [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
                        "--num_machines", "1", "--use_fsdp"],
}


def torchrun(args: list[str], timeout: int = 600, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*LAUNCHERS[launcher], "-m", "atwu_fast.unlearn", *args], capture_output=True, text=True,
                           env=env, timeout=timeout)


@pytest.mark.parametrize("launcher, parallel, engine", [("torchrun", "ddp", "ddp"), ("torchrun", "fsdp", "fsdp"),
                                                        ("accelerate-fsdp", "auto", "fsdp")])
def test_two_ranks_write_the_single_process_results(single_run, launcher, parallel, engine):
    root, expected = single_run
    out = root / f"{launcher}-{parallel}"
    proc = torchrun(TINY + ["--methods", METHODS, "--output-dir", str(out), "--cache-dir", str(root / "cache"),
                            "--efficiency.parallel", parallel], launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert GROUP_OUTLIVED_SHUTDOWN not in proc.stderr  # every rank freed its group before exit
    assert yaml.safe_load((out / "config.yaml").read_text())["efficiency"]["parallel"] == engine
    assert proc.stdout.count("results written to") == 1  # rank 0 alone reports
    got = json.loads((out / "results.json").read_text())
    assert set(got) == set(expected)
    for name, metrics in expected.items():
        for key, value in metrics.items():
            if key == "train_seconds" or value is None:
                continue
            assert got[name][key] == pytest.approx(value, rel=1e-3, abs=1e-4), (name, key)
    weights = load_file(str(out / "atwu" / "model" / "model.safetensors"))  # whole, gathered from the shards
    single = load_file(str(root / "single" / "atwu" / "model" / "model.safetensors"))
    assert set(weights) == set(single)
    for key, value in single.items():
        assert weights[key].shape == value.shape
        assert (weights[key] - value).abs().max() < 1e-4, key
    assert (out / "report.html").is_file()


@pytest.fixture(scope="module")
def tofu_single(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_tofu")
    model_dir = save_tiny_model(root / "model", chat=True)
    args = TOFU + ["--model", str(model_dir), "--methods", "atwu,npo", "--benchmark.epochs", "2",
                   "--benchmark.eval_every_epoch", "true", "--benchmark.keep_best_by", "model_utility",
                   "--retain-logs", str(TOFU_DIR.parent / "tofu_retain_logs"), "--threads", "1"]
    assert main(args + ["--output-dir", str(root / "single")]) == 0
    return root, args, json.loads((root / "single" / "results.json").read_text())


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_tofu_run_equals_one_process(tofu_single, parallel):
    root, args, expected = tofu_single
    out = root / parallel
    proc = torchrun(args + ["--output-dir", str(out), "--efficiency.parallel", parallel])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert GROUP_OUTLIVED_SHUTDOWN not in proc.stderr  # every rank freed its group before exit
    got = json.loads((out / "results.json").read_text())
    assert set(got) == set(expected) == {"atwu", "npo"}
    for name, metrics in expected.items():
        for key, value in metrics.items():
            if key != "train_seconds" and isinstance(value, (int, float)):
                assert got[name][key] == pytest.approx(value, rel=1e-3, abs=1e-4), (name, key)
    for name in ("atwu", "npo"):
        assert (out / name / "TOFU_SUMMARY.json").is_file() and (out / name / "best" / "best.json").is_file()
        assert (out / name / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("bench", ["tofu", "rwku"])
def test_torchrun_eval_gathers_every_row(tmp_path, bench):
    """`python -m atwu_fast.eval` on 2 ranks: each evaluates half the rows; the gathered logs equal
    one process's value by value."""
    from fixtures.tiny import RWKU_DIR

    from atwu_fast.eval.__main__ import main as eval_main

    model_dir = save_tiny_model(tmp_path / "model", chat=True)
    args = (["--benchmark", "tofu", "--split", "forget10", "--data-dir", str(TOFU_DIR)] if bench == "tofu" else
            ["--benchmark", "rwku", "--targets", "1", "--data-dir", str(RWKU_DIR)])
    args += ["--model", str(model_dir), "--benchmark.max_new_tokens", "4", "--benchmark.eval_batch_size", "3",
             "--threads", "1"]
    assert eval_main(args + ["--output-dir", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*LAUNCHERS["torchrun"], "-m", "atwu_fast.eval", *args, "--output-dir", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert GROUP_OUTLIVED_SHUTDOWN not in proc.stderr  # every rank freed its group before exit
    name = bench.upper()
    single = json.loads((tmp_path / "single" / f"{name}_EVAL.json").read_text())
    two = json.loads((tmp_path / "two" / f"{name}_EVAL.json").read_text())
    assert set(single) == set(two)
    for metric, entry in single.items():
        other = two[metric]
        if isinstance(entry, dict) and "value_by_index" in entry:
            assert entry["value_by_index"].keys() == other["value_by_index"].keys(), metric
        assert json.dumps(entry, sort_keys=True) == json.dumps(other, sort_keys=True) or \
            _close(entry, other), metric


def _close(a, b) -> bool:
    """Nested JSON values equal up to float round-off (rank-local batches may differ in padding)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-5)
    return a == b
