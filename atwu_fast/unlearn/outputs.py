"""What a run writes, and how a resumed run knows a method finished.

Per method (``<out>/<method>/``): ``model/``, what its hooks learned (ATWU: ``scorer.safetensors``),
the suite's logs (``<NAME>_EVAL.json``), ``history.json``, ``samples.json``, ``token_scores.json``,
the live ``metrics.jsonl`` and, written atomically and LAST, ``metrics.json``: its presence marks the
method finished. Per run: ``reference.json`` (reference models, training-free rankers, the benchmark's
columns), ``results.json``, ``results.md``, ``config.yaml``, ``report.html``, ``comparison.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference.json"


def finished_metrics(method_dir: str | Path) -> dict | None:
    """The saved metrics of a completed method, or None when it has not finished."""
    path = Path(method_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}); delete it to re-run the method") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics; delete it to re-run the method")
    return metrics


def metric_value(metrics: dict, key: str) -> float | None:
    """``key`` from a metrics dict; a leading '-' negates it (so that larger is always better)."""
    sign = -1.0 if key.startswith("-") else 1.0
    value = metrics.get(key.lstrip("-"))
    return None if value is None or not math.isfinite(float(value)) else sign * float(value)
