"""Progress bars (quiet unless on a terminal), the per-step metrics JSONL logger, TensorBoard and --log.*."""

import io
import json
import math
import sys

import pytest
import torch

from atwu_fast.config.args import parse_config
from atwu_fast.report import progress
from atwu_fast.unlearn.experiment import ExperimentConfig

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def restore_mode():
    yield
    progress.configure("auto")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_auto_mode_follows_stderr_isatty(monkeypatch):
    progress.configure("auto")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.enabled()
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert progress.enabled()
    assert list(progress.bar(range(3), desc="counting")) == [0, 1, 2]
    assert "counting" in tty.getvalue()


def test_quiet_when_not_interactive_and_forced_modes(monkeypatch):
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    progress.configure("auto")
    assert list(progress.batch_starts(10, 4, "rows")) == [0, 4, 8]
    assert quiet.getvalue() == ""
    progress.configure("on")
    assert progress.enabled()
    assert list(progress.batch_starts(10, 4, "rows")) == [0, 4, 8]
    assert "rows:" in quiet.getvalue() and "/10" in quiet.getvalue()
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    progress.configure("off")
    assert not progress.enabled()
    with pytest.raises(ValueError, match="progress mode"):
        progress.configure("loud")


def test_metrics_logger_writes_one_json_line_per_step(tmp_path):
    path = tmp_path / "m" / "metrics.jsonl"
    with progress.MetricsLogger(path, "atwu") as log:
        log.log({"step": 1, "loss": torch.tensor(2.5), "forget_nll": float("nan"), "lr": 1e-3})
        assert len(path.read_text().splitlines()) == 1  # flushed per line: tail-able during training
        log.log({"step": 2, "loss": 2.0, "forget_nll": math.inf, "lr": 1e-3})
    rows = progress.read_jsonl(path)
    assert rows == [{"method": "atwu", "step": 1, "loss": 2.5, "forget_nll": None, "lr": 1e-3},
                    {"method": "atwu", "step": 2, "loss": 2.0, "forget_nll": None, "lr": 1e-3}]
    for line in path.read_text().splitlines():
        json.loads(line)  # strict JSON (no NaN tokens)


def test_tensorboard_writer_or_a_clear_error(tmp_path, monkeypatch):
    if progress.tensorboard_available():
        with progress.MetricsLogger(tmp_path / "metrics.jsonl", "atwu", tensorboard_dir=tmp_path / "tb") as log:
            log.log({"step": 1, "loss": 1.0})
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    monkeypatch.setattr(progress, "tensorboard_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'atwu-fast\[tensorboard\]'"):
        progress.tensorboard_writer(tmp_path / "tb2")


def test_log_options_parse_and_validate(capsys):
    cfg = parse_config(ExperimentConfig, ["--log.progress", "off", "--log.report", "false"], prog="t",
                       description="", shortcuts={})
    assert cfg.log.progress == "off" and cfg.log.report is False and cfg.log.tensorboard is False
    with pytest.raises(SystemExit) as exc:
        parse_config(ExperimentConfig, ["--log.progress", "loud"], prog="t", description="", shortcuts={})
    assert exc.value.code == 2
    assert "log.progress" in capsys.readouterr().err


def test_tensorboard_flag_without_package_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(progress, "tensorboard_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        parse_config(ExperimentConfig, ["--log.tensorboard", "true"], prog="t", description="", shortcuts={})
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "tensorboard package is not installed" in lines[0]
