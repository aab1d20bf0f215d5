"""Results tables: headline columns (each benchmark declares its own) and the plain-text (markdown) table."""

from __future__ import annotations

import math

Column = tuple[str, str, str]  # (metric key, title, format)



def columns_for(columns: list[Column], rows: dict[str, dict]) -> list[Column]:
    """``columns`` that some row has a value for."""
    return [c for c in columns if any(m.get(c[0]) is not None for m in rows.values())]


def cell(value, fmt: str) -> str:
    """``value`` formatted with ``fmt``; None / non-finite → "-", non-numbers as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def results_table(rows: dict[str, dict], columns: list[Column]) -> str:
    """One line per model/method, ``columns`` as columns (markdown)."""
    header = ["model"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        cells = [name] + [cell(metrics.get(key), fmt) for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
