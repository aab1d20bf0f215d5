"""Real-benchmark runs (TOFU, RWKU, JSONL) on the tiny fixtures write the same self-contained report
as the embedded benchmark, with their own metrics; a resumed run keeps the methods that finished."""

import json
import os

import pytest
from fixtures.tiny import RWKU_DIR, TOFU_DIR, save_tiny_model
from test_report import BROWSER, NEEDS_CHROMIUM, render_in_chromium, self_contained  # tests/ is on sys.path

from atwu_fast.report.__main__ import main as report_main
from atwu_fast.report.token_scores import EOS_TEXT
from atwu_fast.train.trainer import Unlearner
from atwu_fast.unlearn.__main__ import main as unlearn_main

pytestmark = pytest.mark.slow

SMALL = ["--train.forget_batch_size", "2", "--train.retain_batch_size", "2", "--benchmark.max_new_tokens", "2"]
TOFU = ["--benchmark", "tofu", "--split", "forget10", "--benchmark.data_dir", str(TOFU_DIR), *SMALL,
        "--train.forget_batch_size", "4"]  # the 4 rows of the fixture's retain logs: one step per epoch
TOFU_METHODS = ["atwu", "grad_diff"]


class Stopped(Exception):
    """Raised by a patched training step to interrupt a run."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("real-report") / "model", chat=True)


@pytest.fixture(scope="module")
def tofu_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-report") / "tofu"
    assert unlearn_main(TOFU + ["--model", str(model_dir), "--methods", ",".join(TOFU_METHODS),
                                "--benchmark.epochs", "2", "--benchmark.eval_every_epoch", "true",
                                "--retain-logs", str(TOFU_DIR.parent / "tofu_retain_logs"),
                                "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def rwku_run(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-report")
    spans = root / "spans.json"
    spans.write_text(json.dumps([{"target_words": ["Carrie"]}, {"target_words": ["Portland", "Maine"]}]))
    assert unlearn_main(["--benchmark", "rwku", "--targets", "1", "--model", str(model_dir), "--benchmark.data_dir",
                         str(RWKU_DIR), "--method", "wga", "--train.steps", "1", "--benchmark.spans_file", str(spans),
                         "--benchmark.max_new_tokens", "2", "--output-dir", str(root / "rwku")]) == 0
    return root / "rwku"


def headline(page, method: str) -> dict[str, str]:
    """Column title → cell text of ``method``'s row in the report's headline metric table."""
    return {title.strip(): value.strip() for title, value in zip(page.table_rows["model"], page.table_rows[method])}


def test_tofu_report_is_self_contained_with_every_method_and_metric(tofu_run):
    page = self_contained(tofu_run / "report.html")
    results = json.loads((tofu_run / "results.json").read_text())
    assert set(results) == set(TOFU_METHODS)
    assert {"metrics", "all-metrics", "tradeoff", *(f"m-{m}" for m in TOFU_METHODS)} <= set(page.ids)
    for method in TOFU_METHODS:
        row, res = headline(page, method), results[method]
        assert row["FQ"] == f"{res['forget_quality']:.2e}" and row["MU"] == f"{res['model_utility']:.3f}"
        assert row["forget TR"] == f"{res['forget_truth_ratio']:.3f}" and row["privleak"] == f"{res['privleak']:.2f}"
        assert row["ES"] == f"{res['extraction_strength']:.3f}"
        assert "forget acc" not in row  # the embedded benchmark's columns are not used
        # every metric the run saved has a row in the all-metrics table, one value per method
        for key, value in res.items():
            cells = page.table_rows[key]
            assert cells[1 + TOFU_METHODS.index(method)].strip() == f"{value:.4g}", key
    assert "forget_Q_A_PERT_Prob" in page.table_rows
    text = (tofu_run / "report.html").read_text()
    assert (tofu_run / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="data:image/png;base64,' in text


def test_tofu_report_heatmaps_and_curves(tofu_run):
    page = self_contained(tofu_run / "report.html")
    forget = [json.loads(line) for line in (TOFU_DIR / "forget10.json").read_text().splitlines()]
    for method in TOFU_METHODS:
        doc = json.loads((tofu_run / method / "token_scores.json").read_text())
        assert page.rows[method] == list(range(len(forget)))
        for i, row in enumerate(forget):
            spans = page.tokens[(method, i)]
            assert page.token_text[(method, i)].removesuffix(EOS_TEXT).strip() == row["answer"]
            shown = [float(s["data-score"]) for s in spans]
            saved = doc["rows"][i][doc["score_key"]]
            assert shown == pytest.approx(saved, rel=1e-5, abs=1e-6)
        # loss, NLL (+ ATWU's scores), and the headline metrics over the two epoch evaluations
        assert page.svgs[method] >= (3 if method == "atwu" else 2) + 4
        steps = [json.loads(line)["step"] for line in (tofu_run / method / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
    assert json.loads((tofu_run / "atwu" / "token_scores.json").read_text())["score_key"] == "scores"
    assert json.loads((tofu_run / "grad_diff" / "token_scores.json").read_text())["score_key"] == "nll_delta"
    assert all(0.0 <= float(s["data-score"]) <= 1.0 for i in range(len(forget)) for s in page.tokens[("atwu", i)])
    assert 'aria-label="FQ (evaluations)"' in (tofu_run / "report.html").read_text()


def test_rwku_report_has_its_metrics_and_target_word_outlines(rwku_run):
    page = self_contained(rwku_run / "report.html")
    res = json.loads((rwku_run / "results.json").read_text())["wga"]
    row = headline(page, "wga")
    for title, key in (("forget all", "forget_all"), ("neighbour all", "neighbor_all"), ("MIA FM loss", "mia_FM"),
                       ("span AUROC", "span_auroc")):
        assert row[title] == f"{res[key]:.3f}", title
    assert "FQ" not in row and not (rwku_run / "comparison.png").exists()  # RWKU has no forget quality
    text = (rwku_run / "report.html").read_text()
    assert "no comparison plot" in text and "Sample forget generations" in text
    outlined = [s for spans in page.tokens.values() for s in spans if s["outlined_as"] == "k2"]
    assert outlined and all(s["data-kind"] == "2" for s in outlined)
    assert 'class="fact k2">target word<' in text


def test_jsonl_report_respects_report_false_and_regenerates(model_dir, tmp_path):
    forget = [{"question": "Where was Ana born?", "answer": "In Lisbon.", "target_words": ["Lisbon"]},
              {"question": "What does Ana write?", "answer": "Ana writes poems.", "target_words": ["poems"]}]
    retain = [{"question": "Where was Bo born?", "answer": "In Oslo."}, {"text": "Bo likes the sea."}]
    files = {}
    for name, rows in (("forget", forget), ("retain", retain)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "jsonl"
    assert unlearn_main(["--benchmark", "jsonl", "--model", str(model_dir), "--jsonl.forget_file",
                         str(files["forget"]), "--jsonl.retain_file", str(files["retain"]), "--method", "atwu",
                         "--train.steps", "1", *SMALL, "--log.report", "false", "--output-dir", str(out)]) == 0
    assert (out / "results.md").is_file() and (out / "atwu" / "token_scores.json").is_file()
    assert not (out / "report.html").exists() and not (out / "comparison.png").exists()
    assert report_main([str(out)]) == 0  # the report of a real run can be written afterwards
    page = self_contained(out / "report.html")
    res = json.loads((out / "results.json").read_text())["atwu"]
    row = headline(page, "atwu")
    for title, key in (("forget prob", "forget_Q_A_Prob"), ("retain text NLL", "retain_text_loss"),
                       ("NLL span AUROC", "span_auroc_nll"), ("span AUROC", "span_auroc")):
        assert row[title] == f"{res[key]:.3f}", title
    assert page.rows["atwu"] == [0, 1]


def test_resume_keeps_finished_methods_and_resumes_unfinished(model_dir, tmp_path, monkeypatch, capsys):
    """grad_diff finishes, wga is interrupted after 2 of 3 steps; on --resume grad_diff is not
    trained again (no trainer run, files untouched) and wga continues from its step-2 checkpoint."""
    out = tmp_path / "run"
    args = TOFU + ["--model", str(model_dir), "--methods", "grad_diff,wga", "--train.steps", "3",
                   "--train.checkpoint_every", "1", "--output-dir", str(out)]
    real_step, real_run = Unlearner.train_step, Unlearner.run

    def interrupted_step(self, step, trainable):
        if self.method.name == "wga" and step == 2:
            raise Stopped  # as if the run were killed here
        return real_step(self, step, trainable)

    monkeypatch.setattr(Unlearner, "train_step", interrupted_step)
    with pytest.raises(Stopped):
        unlearn_main(args)
    assert (out / "grad_diff" / "metrics.json").is_file() and not (out / "wga" / "metrics.json").exists()
    assert not (out / "results.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in (out / "grad_diff").rglob("*") if p.is_file()}
    finished = json.loads((out / "grad_diff" / "metrics.json").read_text())

    trained = []

    def counting_run(self, *a, **kw):
        trained.append(self.method.name)
        return real_run(self, *a, **kw)

    monkeypatch.setattr(Unlearner, "train_step", real_step)
    monkeypatch.setattr(Unlearner, "run", counting_run)
    capsys.readouterr()
    assert unlearn_main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert trained == ["wga"]
    assert "grad_diff: already finished, kept" in printed and "(step 2)" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "grad_diff").rglob("*") if p.is_file()} == kept
    history = json.loads((out / "wga" / "history.json").read_text())
    assert [h["step"] for h in history["steps"]] == [1, 2, 3]
    results = json.loads((out / "results.json").read_text())
    assert results["grad_diff"] == finished and "model_utility" in results["wga"]
    page = self_contained(out / "report.html")  # the kept method's metrics are in the final report
    assert headline(page, "grad_diff")["MU"] == f"{finished['model_utility']:.3f}"
    assert "wga" in page.table_rows


def test_resume_from_the_final_steps_checkpoint_evaluates_and_finishes(model_dir, tmp_path, monkeypatch):
    """A crash after the last checkpoint but before metrics.json: --resume trains nothing more, runs
    the final evaluation again and writes the method's results."""
    import atwu_fast.unlearn.driver as real

    out = tmp_path / "run"
    args = TOFU + ["--model", str(model_dir), "--method", "wga", "--train.steps", "2", "--output-dir", str(out)]
    saved = real.save_token_scores

    def crash(*a, **kw):
        raise Stopped

    monkeypatch.setattr(real, "save_token_scores", crash)
    with pytest.raises(Stopped):
        unlearn_main(args)
    assert (out / "checkpoints" / "wga" / "step-0000002").is_dir() and not (out / "wga" / "metrics.json").exists()
    monkeypatch.setattr(real, "save_token_scores", saved)
    steps = []
    real_step = Unlearner.train_step
    monkeypatch.setattr(Unlearner, "train_step", lambda self, step, t: steps.append(step) or real_step(self, step, t))
    assert unlearn_main(args + ["--resume"]) == 0
    assert steps == [] and "model_utility" in json.loads((out / "wga" / "metrics.json").read_text())


def test_resume_with_a_corrupt_metrics_file_is_a_clean_error(model_dir, tmp_path, capsys):
    (tmp_path / "run" / "grad_diff").mkdir(parents=True)
    (tmp_path / "run" / "grad_diff" / "metrics.json").write_text("{truncated")
    with pytest.raises(SystemExit) as exc:
        unlearn_main(TOFU + ["--model", str(model_dir), "--method", "grad_diff", "--train.steps", "1",
                             "--output-dir", str(tmp_path / "run"), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "metrics.json: not valid JSON" in err[0]


@BROWSER
@NEEDS_CHROMIUM
def test_real_report_renders_in_headless_chromium(tofu_run, tmp_path):
    page = render_in_chromium(tofu_run / "report.html", tmp_path)
    assert {"metrics", "tradeoff", *(f"m-{m}" for m in TOFU_METHODS)} <= set(page.ids)
    assert page.rows["atwu"] == [0, 1, 2, 3] and "data:image/png;base64," in page.dom
    assert os.path.getsize(tofu_run / "report.html") > 10_000
