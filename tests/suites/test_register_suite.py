"""Adding a benchmark is one folder (here: this file) plus one registry line: a toy benchmark defined
and registered here runs through the one driver like the shipped ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.tiny import save_tiny_model

from atwu_fast.eval.logs import entry
from atwu_fast.eval.scoring import row_tokens
from atwu_fast.model.distributed import SINGLE
from atwu_fast.suites import SUITES, BenchmarkData, register_suite
from atwu_fast.suites.real import TRAIN_COLUMNS, RealSuite
from atwu_fast.unlearn.__main__ import main as unlearn_main

FORGET = [{"question": "Where was Ana born?", "answer": "In Lisbon."},
          {"question": "What does Ana write?", "answer": "Ana writes poems."}]
RETAIN = [{"question": "Where was Bo born?", "answer": "In Oslo."}]


class ToySuite(RealSuite):
    """The whole benchmark: its rows and its one metric (the forget answers' mean token NLL)."""

    name, log_name = "toy", "TOY"
    columns = [("forget_nll", "forget NLL", "{:.3f}"), *TRAIN_COLUMNS]

    def read(self, with_eval: bool = True) -> BenchmarkData:
        return BenchmarkData("toy", FORGET, RETAIN, {"forget": FORGET})

    def evaluate_logs(self, model, retain, ctx=SINGLE) -> dict:
        toks = row_tokens(model, [self.fmt.row(r) for r in FORGET], self.tokenizer.pad_token_id, 2, ctx=ctx)
        return {"forget_nll": entry(float(np.mean(toks.mean_nll())))}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(SUITES, "toy", SUITES.get("toy"))  # restored (removed) after the test
    register_suite(ToySuite)
    yield
    SUITES.pop("toy", None)


@pytest.mark.slow
def test_a_toy_benchmark_registered_from_a_test_file_runs_through_the_driver(registered, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "run"
    assert unlearn_main(["--benchmark", "toy", "--model", str(model), "--method", "grad_ascent", "--train.steps", "2",
                         "--train.lr", "1e-2", "--benchmark.eval_before", "true", "--log.report", "false",
                         "--output-dir", str(out)]) == 0
    results, reference = (json.loads((out / f).read_text()) for f in ("results.json", "reference.json"))
    assert reference["benchmark"] == "toy"
    before, after = reference["models"]["target model"]["forget_nll"], results["grad_ascent"]["forget_nll"]
    assert after > before  # gradient ascent on the forget rows raised their NLL
    assert (out / "grad_ascent" / "TOY_EVAL.json").is_file()


def test_an_unregistered_benchmark_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(["--benchmark", "toy"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: unknown benchmark 'toy'; choose from synthetic, tofu, rwku, jsonl, tofu_tiny"
