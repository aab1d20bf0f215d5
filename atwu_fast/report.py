"""Plain-text results tables."""

from __future__ import annotations

import math

COLUMNS = [
    ("forget_quality", "FQ", "{:.2e}"),
    ("model_utility", "MU", "{:.3f}"),
    ("forget_acc", "forget acc", "{:.3f}"),
    ("retain_acc", "retain acc", "{:.3f}"),
    ("forget_rouge", "forget RL", "{:.3f}"),
    ("retain_rouge", "retain RL", "{:.3f}"),
    ("forget_truth_ratio", "forget TR", "{:.3f}"),
    ("span_auroc", "span AUROC", "{:.3f}"),
    ("span_ap", "span AP", "{:.3f}"),
    ("span_auroc_avg", "AUROC avg", "{:.3f}"),
]


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def results_table(rows: dict[str, dict]) -> str:
    """One line per model/method, the DESIGN.md headline metrics as columns (markdown)."""
    header = ["model"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        cells = [name] + [_cell(metrics.get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
