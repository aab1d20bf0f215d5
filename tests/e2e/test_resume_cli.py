"""A run killed with SIGKILL mid-training resumes to the same final weights as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_cli import TINY

from atwu_fast.unlearn.__main__ import main

pytestmark = pytest.mark.slow

RUN = TINY + ["--method", "atwu", "--train.steps", "300", "--train.checkpoint_every", "10", "--eval.generate", "false",
              "--log.report", "false", "--eval.eval_every", "50"]


def weights(run_dir):
    return load_file(str(run_dir / "atwu" / "model" / "model.safetensors"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    cache = tmp_path / "cache"
    assert main(RUN + ["--output-dir", str(tmp_path / "a"), "--cache-dir", str(cache)]) == 0

    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "atwu_fast.unlearn", *RUN, "--output-dir", str(out),
                             "--cache-dir", str(cache)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "atwu" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline:
        if pointer.is_file() and pointer.read_text().strip() >= "step-0000030":
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()

    assert main(RUN + ["--output-dir", str(out), "--cache-dir", str(cache), "--resume"]) == 0
    a, b = weights(tmp_path / "a"), weights(out)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    assert torch.equal(load_file(str(tmp_path / "a" / "atwu" / "scorer.safetensors"))["weight"],
                       load_file(str(out / "atwu" / "scorer.safetensors"))["weight"])
    history = json.loads((out / "atwu" / "history.json").read_text())
    assert [h["step"] for h in history["steps"]] == list(range(1, 301))
    assert not (out / "checkpoints").exists()  # cleaned up once the method finished


def test_resume_without_a_run_is_a_clean_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--resume", "--output-dir", str(tmp_path / "nothing")])
    assert exc.value.code == 2
    assert "--resume needs the --output-dir of an interrupted run" in capsys.readouterr().err
