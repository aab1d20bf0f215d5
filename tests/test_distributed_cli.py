"""`torchrun --nproc_per_node 2 -m atwu_fast.unlearn` end to end on CPU (gloo): DDP and FSDP runs
train on shards, evaluate their share of the rows, and write the same results as one process."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from test_cli import TINY

from atwu_fast.unlearn import main

METHODS = "atwu,npo"


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_cli")
    out = root / "single"
    assert main(TINY + ["--methods", METHODS, "--output-dir", str(out), "--cache-dir", str(root / "cache")]) == 0
    return root, json.loads((out / "results.json").read_text())


def torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "atwu_fast.unlearn", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_ranks_write_the_single_process_results(single_run, parallel):
    root, expected = single_run
    out = root / parallel
    proc = torchrun(TINY + ["--methods", METHODS, "--output-dir", str(out), "--cache-dir", str(root / "cache"),
                            "--efficiency.parallel", parallel])
    assert proc.returncode == 0, proc.stderr[-3000:]
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
