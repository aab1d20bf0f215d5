"""When a resumed run may skip a method: its ``<method>/metrics.json`` exists. Both run paths write
that file atomically and last, after every other output of the method, so it marks completion."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.json"


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
