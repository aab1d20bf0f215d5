"""The run report: one self-contained static HTML file (``report.html``) in the output directory.

It holds the metric table (the run's benchmark's headline columns, as ``reference.json`` records
them; real benchmarks also list every metric), the forget-quality/model-utility plot when the results have
both (embedded PNG, also linked), training and evaluation curves as inline SVG, and every forget
answer with each token shaded by the score the method gave it (ATWU: the learned score g;
WGA/SatImp: their token weights; other methods: the per-token NLL increase over the starting
model), ground-truth spans outlined. No scripts, no external CSS, fonts or images: it opens from
disk with no network. It serves the embedded benchmark and real runs (TOFU, RWKU, JSONL) alike.

Regenerate a report from a finished run with ``python -m atwu_fast.report RUN_DIR``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Optional

from .tables import Column, cell, columns_for
from .token_scores import TOKEN_SCORES, kind_names_of

REPORT_NAME = "report.html"
PLOT_NAME = "comparison.png"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- inline SVG charts

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.2e}"
    return f"{v:.3g}"


def svg_chart(title: str, series: list[tuple[str, list, list]], ylim: Optional[tuple[float, float]] = None,
              width: int = 360, height: int = 200, xlabel: str = "step") -> str:
    """A small line chart: ``series`` = [(label, xs, ys)], None/NaN values skipped."""
    pts = [[(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
           for _, xs, ys in series]
    allp = [p for s in pts for p in s]
    left, right, top, bottom = 52, 10, 24, 34
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<title>{esc(title)}</title>',
             f'<text x="{width / 2:.1f}" y="15" text-anchor="middle" class="ct">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    if not allp:
        parts.append(f'<text x="{width / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle" class="lbl">no data</text>')
        parts.append("</svg>")
        return "".join(parts)
    x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
    y0, y1 = ylim if ylim else (min(p[1] for p in allp), max(p[1] for p in allp))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 1), y1 + (abs(y1) * 0.1 or 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end" class="lbl">{esc(_fmt(yv))}</text>')
    for xv in (x0, x1):
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle" class="lbl">{esc(_fmt(xv))}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" class="lbl">{esc(xlabel)}</text>')
    for i, ((label, _, _), sp) in enumerate(zip(series, pts)):
        color = PALETTE[i % len(PALETTE)]
        if len(sp) > 1:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sp)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(sp) <= 30:
            parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{color}"/>' for x, y in sp)
        lx = left + 6 + i * 110
        parts.append(f'<rect x="{lx}" y="{top + 5}" width="10" height="3" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{top + 10}" class="lbl">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


EVAL_CHARTS = 4  # at most this many headline metrics are charted over a real run's evaluations


def training_curves(history: dict, columns: list[Column] = ()) -> str:
    """Loss, NLLs, ATWU's scores and span AUROC over steps; a real run's headline metrics
    (``columns``) over its evaluations (``history["evals"]``)."""
    steps = history.get("steps") or []
    checkpoints = history.get("span_checkpoints") or []
    evals = history.get("evals") or []
    xs = [s.get("step") for s in steps]

    def col(key: str) -> list:
        return [s.get(key) for s in steps]

    charts = [svg_chart("model loss", [("loss", xs, col("loss"))]),
              svg_chart("answer NLL", [("forget", xs, col("forget_nll")), ("retain", xs, col("retain_nll"))])]
    if any(s.get("score_mean") is not None for s in steps):
        charts.append(svg_chart("forget-token scores", [("mean g", xs, col("score_mean")),
                                                        ("frac g > 0.5", xs, col("score_frac"))], ylim=(0.0, 1.0)))
    if checkpoints:
        cx = [c.get("step") for c in checkpoints]
        charts.append(svg_chart("span AUROC", [("unique", cx, [c.get("span_auroc") for c in checkpoints]),
                                               ("all facts", cx, [c.get("span_auroc_all") for c in checkpoints])],
                                ylim=(0.0, 1.0)))
    ex = [e.get("step") for e in evals]
    # a curve needs two evaluations (a run that evaluates only at its end has its numbers in the table)
    charted = [c for c in columns if sum(e.get(c[0]) is not None for e in evals) >= 2][:EVAL_CHARTS]
    charts.extend(svg_chart(f"{title} (evaluations)", [(title, ex, [e.get(key) for e in evals])])
                  for key, title, _ in charted)
    return '<div class="curves">' + "".join(charts) + "</div>"


# --------------------------------------------------------------------------- heatmap


def _shade(value: Optional[float], scale: float, signed: bool) -> str:
    if value is None:
        return "transparent"
    v = value / scale if scale > 0 else 0.0
    v = max(-1.0, min(1.0, v))
    if signed and v < 0:
        return f"rgba(37,99,235,{-v * 0.8:.3f})"
    return f"rgba(220,38,38,{max(v, 0.0) * 0.85:.3f})"


def token_heatmap(doc: dict, method: str) -> str:
    key, signed = doc.get("score_key", "scores"), bool(doc.get("signed"))
    kind_names = kind_names_of(doc)
    legend = " ".join(f'<span class="fact k{k}">{esc(n)}</span>' for k, n in sorted(kind_names.items(), reverse=True)
                      if k >= 1)
    rows = doc.get("rows") or []
    values = [v for r in rows for v in (r.get(key) or []) if v is not None]
    if not signed and values and min(values) >= 0 and max(values) <= 1:
        scale = 1.0
    else:
        scale = max((abs(v) for v in values), default=1.0) or 1.0
    out = [f'<p class="note">Shading: {esc(doc.get("score_name", key))}'
           + (f" (full colour = {esc(_fmt(scale))}; blue = decrease)" if signed else
              f" (full colour = {esc(_fmt(scale))})")
           + f". Outlined (ground truth): {legend}. Hover a token for its values.</p>",
           f'<div class="forget" data-method="{esc(method)}">']
    for r in rows:
        scores = r.get(key) or [None] * len(r["tokens"])
        nll, delta = r.get("nll") or [], r.get("nll_delta") or []
        spans, run = [], 0  # run: kind of the open ground-truth span wrapper (0: none)
        for i, (text, kind) in enumerate(zip(r["tokens"], r["span_kind"])):
            if kind != run:
                if run:
                    spans.append("</span>")
                if kind >= 1:
                    spans.append(f'<span class="fact k{int(kind)}">')
                run = kind if kind >= 1 else 0
            s = scores[i] if i < len(scores) else None
            tip = [f"{text!r}", f"{doc.get('score_name', key)}: {_fmt(s) if s is not None else 'n/a'}"]
            if i < len(nll) and nll[i] is not None:
                tip.append(f"NLL {nll[i]:.3f}" + (f" (change {delta[i]:+.3f})" if i < len(delta) and delta[i] is not None else ""))
            tip.append(kind_names.get(kind, str(kind)))
            score_attr = "" if s is None else f"{s:.6g}"
            spans.append(f'<span class="tok k{int(kind)}" data-score="{esc(score_attr)}" data-kind="{int(kind)}" '
                         f'style="background:{_shade(s, scale, signed)}" title="{esc(" | ".join(tip))}">'
                         f"{esc(text)}</span>")
        if run:
            spans.append("</span>")
        label = f'Q{int(r["row"]) + 1}: {esc(r["question"])}' if r.get("question") else f'row {int(r["row"]) + 1}'
        out.append(f'<div class="qa" data-row="{int(r["row"])}"><div class="q">{label}</div>'
                   f'<div class="a">{"".join(spans)}</div></div>')
    out.append("</div>")
    return "".join(out)


# --------------------------------------------------------------------------- tables


def metrics_table(rows: dict[str, dict], methods: set[str], columns: list[Column]) -> str:
    """One row per model/method, ``columns`` as columns; methods link to their sections."""
    head = "".join(f"<th>{esc(title)}</th>" for _, title, _ in columns)
    body = []
    for name, metrics in rows.items():
        cls = "method" if name in methods else "refrow"
        label = f'<a href="#m-{esc(name)}">{esc(name)}</a>' if name in methods else esc(name)
        cells = "".join(f'<td data-key="{esc(k)}">{esc(cell(metrics.get(k), fmt))}</td>' for k, _, fmt in columns)
        body.append(f'<tr class="{cls}"><th scope="row">{label}</th>{cells}</tr>')
    return (f'<table class="metrics" id="metrics"><thead><tr><th>model</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def all_metrics_table(rows: dict[str, dict]) -> str:
    """Every numeric metric (one row each) by method (columns), collapsed."""
    keys = sorted({k for m in rows.values() for k, v in m.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not keys:
        return ""
    head = "".join(f"<th>{esc(n)}</th>" for n in rows)
    body = "".join(f'<tr><th scope="row">{esc(k)}</th>'
                   + "".join(f'<td data-method="{esc(n)}">{esc(cell(m.get(k), "{:.4g}"))}</td>' for n, m in rows.items())
                   + "</tr>" for k in keys)
    return (f'<details><summary>All metrics ({len(keys)})</summary><table class="metrics" id="all-metrics">'
            f"<thead><tr><th>metric</th>{head}</tr></thead><tbody>{body}</tbody></table></details>")


def rankers_table(rankers: dict[str, dict]) -> str:
    if not rankers:
        return ""
    keys = [("span_auroc", "AUROC unique"), ("span_ap", "AP unique"), ("span_auroc_all", "AUROC all facts"),
            ("span_ap_all", "AP all facts")]
    head = "".join(f"<th>{t}</th>" for _, t in keys)
    body = "".join(f'<tr><th scope="row">{esc(n)}</th>'
                   + "".join(f"<td>{esc(cell(r.get(k), '{:.3f}'))}</td>" for k, _ in keys) + "</tr>"
                   for n, r in rankers.items())
    return (f'<h3>Heuristic token rankers on the target model</h3><table class="metrics"><thead><tr><th>ranker</th>'
            f"{head}</tr></thead><tbody>{body}</tbody></table>")


def samples_table(samples: list[dict]) -> str:
    if not samples:
        return ""
    body = "".join(f"<tr><td>{esc(s.get('question', ''))}</td><td>{esc(s.get('answer', ''))}</td>"
                   f"<td>{esc(s.get('generation', ''))}</td></tr>" for s in samples)
    return ('<h4>Sample forget generations</h4><table class="samples"><thead><tr><th>question</th><th>answer</th>'
            f"<th>generation after unlearning</th></tr></thead><tbody>{body}</tbody></table>")


# --------------------------------------------------------------------------- the page

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#111}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}thead th{background:#f3f4f6}
tbody th{text-align:left}tr.refrow{color:#555;background:#fafafa}
table.samples td{text-align:left;max-width:26em}
.curves{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{background:#fff;border:1px solid #e5e7eb}
svg .ct{font-size:12px;font-weight:600}svg .lbl{font-size:10px;fill:#444}
svg .frame{fill:none;stroke:#bbb}svg .grid{stroke:#eee}
.qa{margin:.35em 0;padding:.3em .5em;border-left:3px solid #e5e7eb}
.q{font-size:.85em;color:#555}
.a{white-space:pre-wrap;font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:.92em;line-height:1.9}
.tok{border-radius:2px;padding:1px 0}
.fact{border-radius:3px;padding:1px 1px}
.fact.k2{outline:2px solid #1d4ed8;outline-offset:0}
.fact.k1{outline:1.5px dashed #6b7280;outline-offset:0}
.note{font-size:.85em;color:#444}
details>summary{cursor:pointer;font-weight:600;margin:.6em 0}
img.plot{max-width:100%;border:1px solid #e5e7eb}
"""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def run_columns(reference: dict, rows: dict[str, dict]) -> list[Column]:
    """The headline columns the run recorded (``reference.json``), those with a value; a run without them
    shows every numeric metric."""
    recorded = reference.get("columns")
    if recorded:
        return columns_for([tuple(c) for c in recorded], rows)
    keys = dict.fromkeys(k for m in rows.values() for k, v in m.items() if isinstance(v, (int, float)))
    return [(k, k, "{:.4g}") for k in keys]


def build_report(out_dir: str | Path) -> str:
    """The report HTML of a finished run directory (results.json and per-method outputs)."""
    out_dir = Path(out_dir)
    results = _read_json(out_dir / "results.json") or {}
    reference = _read_json(out_dir / "reference.json") or {}
    models = reference.get("models", {})
    methods = list(results)
    benchmark = reference.get("benchmark", "synthetic")
    columns = run_columns(reference, {**models, **results})
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>atwu-fast run report: {esc(out_dir.name)}</title>",
             f"<style>{CSS}</style></head><body>",
             f'<h1>atwu-fast run report <small>{esc(out_dir.name)} ({esc(benchmark)})</small></h1>',
             '<nav><a href="#metrics">metrics</a> &middot; <a href="#tradeoff">trade-off plot</a>'
             + "".join(f' &middot; <a href="#m-{esc(m)}">{esc(m)}</a>' for m in methods) + "</nav>",
             "<h2>Metrics</h2>", metrics_table({**models, **results}, set(methods), columns),
             "" if benchmark == "synthetic" else all_metrics_table(results),
             rankers_table(reference.get("rankers", {}))]
    parts.append('<h2 id="tradeoff">Forget quality vs model utility</h2>')
    plot = out_dir / PLOT_NAME
    if plot.is_file():
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        parts.append(f'<p><a href="{PLOT_NAME}">{PLOT_NAME}</a></p>'
                     f'<img class="plot" alt="forget quality vs model utility" src="data:image/png;base64,{data}">')
    else:
        parts.append("<p>(no comparison plot in this run: no method has both forget quality and model utility)</p>")
    for i, name in enumerate(methods):
        mdir = out_dir / name
        history = _read_json(mdir / "history.json") or {}
        doc = _read_json(mdir / TOKEN_SCORES)
        parts.append(f'<section class="method" id="m-{esc(name)}" data-method="{esc(name)}"><h2>{esc(name)}</h2>')
        parts.append("<h3>Training curves</h3>" + training_curves(history, columns))
        parts.append(samples_table(_read_json(mdir / "samples.json") or []))
        if doc:
            n = len(doc.get("rows") or [])
            parts.append(f'<details{" open" if i == 0 else ""}><summary>Forget answers, tokens shaded by '
                         f"{esc(doc.get('score_name', ''))} ({n} rows)</summary>{token_heatmap(doc, name)}</details>")
        else:
            parts.append("<p>(no token scores saved for this method)</p>")
        parts.append("</section>")
    cfg = out_dir / "config.yaml"
    if cfg.is_file():
        parts.append(f"<h2>Configuration</h2><details><summary>config.yaml</summary><pre>{esc(cfg.read_text())}</pre>"
                     "</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out_dir: str | Path) -> Path:
    from ..data.io import atomic_write_text

    path = Path(out_dir) / REPORT_NAME
    atomic_write_text(path, build_report(out_dir))
    return path


def write_outputs(out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """comparison.png (when some method has forget quality and model utility) and report.html of
    a finished run directory."""
    from .plots import comparison_plot, tradeoff_points

    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    results = _read_json(out_dir / "results.json") or {}
    reference = (_read_json(out_dir / "reference.json") or {}).get("models", {})
    if plot and tradeoff_points(results):
        written["plot"] = comparison_plot(results, out_dir / PLOT_NAME, reference)
    written["report"] = write_report(out_dir)
    return written
