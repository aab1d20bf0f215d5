"""Results tables: each benchmark's headline metric columns, and the plain-text (markdown) table."""

from __future__ import annotations

import math

Column = tuple[str, str, str]  # (metric key, title, format)

COLUMNS: list[Column] = [  # the embedded benchmark (DESIGN.md headline metrics)
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
SPAN_COLUMNS: list[Column] = [("span_auroc", "span AUROC", "{:.3f}"), ("span_ap", "span AP", "{:.3f}"),
                              ("span_auroc_nll", "NLL span AUROC", "{:.3f}")]
TRAIN_COLUMNS: list[Column] = [("train_seconds", "train s", "{:.1f}")]
BENCHMARK_COLUMNS: dict[str, list[Column]] = {
    "synthetic": COLUMNS,
    "tofu": [("forget_quality", "FQ", "{:.2e}"), ("model_utility", "MU", "{:.3f}"),
             ("forget_truth_ratio", "forget TR", "{:.3f}"), ("forget_Q_A_Prob", "forget prob", "{:.3f}"),
             ("forget_Q_A_ROUGE", "forget RL", "{:.3f}"), ("retain_Q_A_Prob", "retain prob", "{:.3f}"),
             ("retain_Q_A_ROUGE", "retain RL", "{:.3f}"), ("privleak", "privleak", "{:.2f}"),
             ("extraction_strength", "ES", "{:.3f}"), ("exact_memorization", "EM", "{:.3f}"),
             *SPAN_COLUMNS, *TRAIN_COLUMNS],
    "rwku": [("forget_FB", "forget FB", "{:.3f}"), ("forget_QA", "forget QA", "{:.3f}"),
             ("forget_AA", "forget AA", "{:.3f}"), ("forget_all", "forget all", "{:.3f}"),
             ("neighbor_FB", "neighbour FB", "{:.3f}"), ("neighbor_QA", "neighbour QA", "{:.3f}"),
             ("neighbor_all", "neighbour all", "{:.3f}"), ("mia_FM", "MIA FM loss", "{:.3f}"),
             ("mia_RM", "MIA RM loss", "{:.3f}"), ("mia_auc_min_k", "MIA AUC min-k", "{:.3f}"),
             *SPAN_COLUMNS, *TRAIN_COLUMNS],
    "jsonl": [("forget_Q_A_Prob", "forget prob", "{:.3f}"), ("forget_Q_A_ROUGE", "forget RL", "{:.3f}"),
              ("extraction_strength", "ES", "{:.3f}"), ("exact_memorization", "EM", "{:.3f}"),
              ("forget_text_loss", "forget text NLL", "{:.3f}"), ("retain_Q_A_Prob", "retain prob", "{:.3f}"),
              ("retain_Q_A_ROUGE", "retain RL", "{:.3f}"), ("retain_text_loss", "retain text NLL", "{:.3f}"),
              *SPAN_COLUMNS, *TRAIN_COLUMNS],
}


def columns_for(benchmark: str, rows: dict[str, dict]) -> list[Column]:
    """The headline columns of ``benchmark``; a real benchmark's keep only those some row has."""
    if benchmark not in BENCHMARK_COLUMNS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARK_COLUMNS)}")
    columns = BENCHMARK_COLUMNS[benchmark]
    if benchmark == "synthetic":
        return columns
    return [c for c in columns if any(m.get(c[0]) is not None for m in rows.values())]


def cell(value, fmt: str) -> str:
    """``value`` formatted with ``fmt``; None / non-finite → "-", non-numbers as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def results_table(rows: dict[str, dict], columns: list[Column] = COLUMNS) -> str:
    """One line per model/method, ``columns`` as columns (markdown)."""
    header = ["model"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        cells = [name] + [cell(metrics.get(key), fmt) for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
