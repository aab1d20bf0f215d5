"""report.html (token-score heatmaps, curves, metric table), comparison.png and metrics.jsonl of a tiny run;
the report rendered by a real headless browser when Debian's chromium is installed."""

import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_cli import TINY  # the shared tiny configuration (tests/ is on sys.path under pytest)
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from atwu_fast.data.formatting import encode_qa
from atwu_fast.finetune.tiny import TokenizerConfig
from atwu_fast.model.tokens import forward_answer_tokens, make_batch
from atwu_fast.report.__main__ import main as report_main
from atwu_fast.report.html import build_report
from atwu_fast.report.token_scores import EOS_TEXT
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate
from atwu_fast.unlearn.__main__ import main

pytestmark = pytest.mark.slow

METHODS = ["atwu", "wga", "grad_diff"]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    assert main(TINY + ["--methods", ",".join(METHODS), "--output-dir", str(out), "--cache-dir",
                        str(root / "cache")]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    forget = generate(SyntheticConfig(**cfg["data"]))["forget"]
    return out, forget, cfg


class Page(HTMLParser):
    """Strict-ish structural parse: every non-void element closed in order; collects what the tests check."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.rows: dict[str, list[int]] = {}  # method -> data-row of each rendered forget answer
        self.tokens: dict[tuple[str, int], list[dict]] = {}  # (method, row) -> token spans
        self.token_text: dict[tuple[str, int], str] = {}
        self.svgs: dict[str, int] = {}
        self.external: list[str] = []
        self.scripts = 0
        self.table_rows: dict[str, list[str]] = {}
        self._cell_row: list[str] | None = None
        self._text_target: list[str] | None = None
        self._section: str | None = None
        self._row: tuple[str, int] | None = None
        self._in_tok = False
        self._current_tr: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in VOID:
            self.stack.append((tag, a))
        if "id" in a:
            self.ids.append(a["id"])
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not (v.startswith("#") or v.startswith("data:") or v == "comparison.png"):
                self.external.append(v)
        if tag == "script":
            self.scripts += 1
        if tag == "link":
            self.external.append(a.get("href", "<link>"))
        if tag == "section" and "data-method" in a:
            self._section = a["data-method"]
        if tag == "svg" and self._section:
            self.svgs[self._section] = self.svgs.get(self._section, 0) + 1
        cls = (a.get("class") or "").split()
        if tag == "div" and "qa" in cls:
            self.rows.setdefault(self._section, []).append(int(a["data-row"]))
            self._row = (self._section, int(a["data-row"]))
            self.tokens[self._row] = []
            self.token_text[self._row] = ""
        if tag == "span" and "tok" in cls:
            fact = [t[1]["class"].split()[1] for t in self.stack[:-1] if "fact" in (t[1].get("class") or "").split()]
            self.tokens[self._row].append({**a, "outlined_as": fact[-1] if fact else None})
            self._in_tok = True
        if tag == "tr":
            self._current_tr = []
        if tag in ("td", "th") and self._current_tr is not None:
            self._current_tr.append("")

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack:
            self.errors.append(f"stray </{tag}> at {self.getpos()}")
            return
        open_tag, _ = self.stack.pop()
        if open_tag != tag:
            self.errors.append(f"</{tag}> closes <{open_tag}> at {self.getpos()}")
        if tag == "span":
            self._in_tok = False
        if tag == "section":
            self._section = None
        if tag == "tr" and self._current_tr:
            self.table_rows[self._current_tr[0].strip()] = self._current_tr
            self._current_tr = None

    def handle_data(self, data):
        if self._in_tok and self._row is not None:
            self.token_text[self._row] += data
        if self._current_tr:
            self._current_tr[-1] += data


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def page(run):
    out, _, _ = run
    return parse((out / "report.html").read_text())


def self_contained(report) -> Page:
    """``report`` parsed, after checking it is well-formed static HTML that loads nothing external."""
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    page = parse(text)
    assert page.errors == [] and page.stack == []
    assert page.scripts == 0 and page.external == []  # nothing fetched, nothing executed
    assert len(page.ids) == len(set(page.ids))
    return page


def test_report_is_valid_self_contained_markup(run):
    out, _, _ = run
    page = self_contained(out / "report.html")
    assert {"metrics", "tradeoff", *(f"m-{m}" for m in METHODS)} <= set(page.ids)


def test_every_forget_row_rendered_with_its_tokens_and_scores(run, page):
    out, forget, _ = run
    assert set(page.rows) == set(METHODS)
    for method in METHODS:
        assert page.rows[method] == list(range(len(forget))), method
        for i, row in enumerate(forget):
            spans = page.tokens[(method, i)]
            # the shaded tokens spell the whole answer (plus the end-of-sequence marker)
            assert page.token_text[(method, i)] == " " + row["answer"] + EOS_TEXT
            scores = [s["data-score"] for s in spans]
            assert all(s != "" for s in scores), (method, i)
            assert all("title" in s and "background" in s["style"] for s in spans)
            values = [float(s) for s in scores]
            if method != "grad_diff":  # ATWU scores and WGA weights lie in [0, 1]
                assert all(0.0 <= v <= 1.0 for v in values)
            # ground truth outlined: a token sits inside a fact outline exactly when it is in a fact span
            for s in spans:
                expected = f"k{s['data-kind']}" if int(s["data-kind"]) >= 1 else None
                assert s["outlined_as"] == expected, (method, i, s)
    kinds = {s["data-kind"] for spans in page.tokens.values() for s in spans}
    assert {"0", "1", "2"} <= kinds


def test_atwu_heatmap_shows_the_saved_scorers_scores(run, page):
    """The shading of ATWU's tokens is g = σ(wᵀh + b) of the saved scorer on the saved model."""
    out, forget, cfg = run
    tok = PreTrainedTokenizerFast.from_pretrained(out / "atwu" / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "atwu" / "model", dtype=torch.float32).eval()
    enc = [encode_qa(tok, r["question"], r["answer"], TokenizerConfig(**cfg["tokenizer"]).max_length,
                     spans=r.get("spans")) for r in forget]
    with torch.no_grad():
        tokens, span_kind = forward_answer_tokens(model, make_batch(enc, tok.pad_token_id, "cpu"))
    scorer = load_file(str(out / "atwu" / "scorer.safetensors"))
    g = torch.sigmoid(tokens.hidden_token @ scorer["weight"] + scorer["bias"])
    shown = torch.tensor([float(s["data-score"]) for i in range(len(forget)) for s in page.tokens[("atwu", i)]])
    assert shown.shape == g.shape
    torch.testing.assert_close(shown, g.float(), atol=1e-4, rtol=1e-4)
    kinds = [int(s["data-kind"]) for i in range(len(forget)) for s in page.tokens[("atwu", i)]]
    assert kinds == span_kind.tolist()
    saved = json.loads((out / "atwu" / "token_scores.json").read_text())
    assert saved["score_key"] == "scores" and len(saved["rows"]) == len(forget)
    assert json.loads((out / "grad_diff" / "token_scores.json").read_text())["score_key"] == "nll_delta"


def test_metric_table_and_curves(run, page):
    out, _, _ = run
    results = json.loads((out / "results.json").read_text())
    for method in METHODS:
        cells = page.table_rows[method]
        assert cells[1].strip() == f"{results[method]['forget_quality']:.2e}"
        assert cells[2].strip() == f"{results[method]['model_utility']:.3f}"
    assert "retain model" in page.table_rows and "target model" in page.table_rows
    # loss, NLL, ATWU's score mean/fraction, span AUROC over steps; GradDiff has no scores or AUROC
    assert page.svgs["atwu"] >= 4 and page.svgs["wga"] >= 3 and page.svgs["grad_diff"] >= 2


def test_comparison_plot_is_a_png_linked_from_the_report(run):
    out, _, _ = run
    data = (out / "comparison.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 400 and height >= 300
    text = (out / "report.html").read_text()
    assert 'href="comparison.png"' in text and 'src="data:image/png;base64,' in text


def test_metrics_jsonl_one_line_per_step(run):
    out, _, cfg = run
    for method in METHODS:
        lines = (out / method / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert [r["step"] for r in rows] == list(range(1, cfg["train"]["steps"] + 1))
        history = json.loads((out / method / "history.json").read_text())["steps"]
        for r, h in zip(rows, history):
            assert r["method"] == method
            assert r["loss"] == pytest.approx(h["loss"]) and r["forget_nll"] == pytest.approx(h["forget_nll"])
    assert "score_frac" in json.loads((out / "atwu" / "metrics.jsonl").read_text().splitlines()[0])


def test_text_is_escaped(tmp_path):
    """Hostile question/token text renders as text, never as markup."""
    (tmp_path / "m").mkdir()
    (tmp_path / "results.json").write_text(json.dumps({"m": {"forget_quality": 0.5, "model_utility": 0.4}}))
    bad = '<script>alert("x")</script>&"\''
    doc = {"method": "m", "score_name": "s<b>", "score_key": "scores", "signed": False, "rows": [
        {"row": 0, "question": bad, "answer": "a", "tokens": [bad, "</span>"], "span_kind": [2, 0],
         "nll": [1.0, None], "nll_delta": None, "scores": [0.25, None]}]}
    (tmp_path / "m" / "token_scores.json").write_text(json.dumps(doc))
    text = build_report(tmp_path)
    page = parse(text)
    assert page.errors == [] and page.scripts == 0
    assert page.token_text[("m", 0)] == bad + "</span>"
    assert [s["data-score"] for s in page.tokens[("m", 0)]] == ["0.25", ""]


def test_regenerate_report_command(run, tmp_path, capsys):
    out, _, _ = run
    before = (out / "report.html").read_text()
    assert report_main([str(out)]) == 0
    assert (out / "report.html").read_text() == before  # deterministic from the run directory
    assert report_main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


# Where CI is set (.ci/run installs chromium and exports CI=true) a missing browser is a failure, not a
# skip: the test runs and starting "chromium" fails with FileNotFoundError
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
CHROMIUM = shutil.which("chromium") or ("chromium" if IN_CI else None)
NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
BROWSER = pytest.mark.browser


def render_in_chromium(report, tmp_path) -> Page:
    """``report`` loaded by headless chromium: its rendered DOM parsed (no errors, no failed loads),
    and a non-trivial screenshot taken."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.resolve().as_uri()
    proc = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = parse(proc.stdout)
    page.dom = proc.stdout
    assert page.errors == []
    for bad in ("Uncaught", "net::ERR_", "Failed to load resource", "Not allowed to load"):
        assert bad not in proc.stderr, proc.stderr[-2000:]
    shot = tmp_path / "shot.png"
    proc = subprocess.run(flags + ["--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    return page


@BROWSER
@NEEDS_CHROMIUM
def test_report_renders_in_headless_chromium(run, tmp_path):
    out, forget, _ = run
    page = render_in_chromium(out / "report.html", tmp_path)
    assert {"metrics", "tradeoff", *(f"m-{m}" for m in METHODS)} <= set(page.ids)
    for method in METHODS:
        assert page.rows[method] == list(range(len(forget)))
    assert page.dom.count("<svg") >= 9 and "data:image/png;base64," in page.dom
