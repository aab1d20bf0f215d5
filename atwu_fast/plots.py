"""Static matplotlib figures of a run (Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

FQ_FLOOR = 1e-30  # forget quality is a KS p-value; 0 (or underflow) is drawn at this floor on the log axis


def _finite(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def tradeoff_points(results: dict[str, dict], reference: dict[str, dict] | None = None) -> list[dict]:
    """(name, fq, mu, kind) of every row that has both metrics; kind is "method" or "reference"."""
    points = []
    for kind, rows in (("reference", reference or {}), ("method", results)):
        for name, metrics in rows.items():
            fq, mu = _finite(metrics.get("forget_quality")), _finite(metrics.get("model_utility"))
            if fq is None or mu is None:
                continue
            points.append({"name": name, "fq": max(fq, FQ_FLOOR), "mu": mu, "kind": kind})
    return points


def comparison_plot(results: dict[str, dict], path: str | Path, reference: dict[str, dict] | None = None,
                    title: str = "Forget quality vs model utility") -> Path:
    """Scatter of forget quality (log x) against model utility (y), one labelled point per method;
    the retain and target models (``reference``) are drawn as grey reference markers. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = tradeoff_points(results, reference)
    fig, ax = plt.subplots(figsize=(8.0, 4.8), dpi=120)
    try:
        methods = [p for p in points if p["kind"] == "method"]
        cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
        groups: dict[tuple, list[str]] = {}  # coincident points get one joined label, not overprinted ones
        for i, p in enumerate(methods):
            ax.scatter(p["fq"], p["mu"], s=60, color=cmap(i % cmap.N), zorder=3, label=p["name"], alpha=0.85)
            groups.setdefault((round(math.log10(p["fq"]), 2), round(p["mu"], 3)), []).append(p["name"])
        for k, ((lfq, mu), names) in enumerate(sorted(groups.items())):
            text = "\n".join(", ".join(names[j:j + 3]) for j in range(0, len(names), 3))
            below = k % 2 == 1  # neighbouring groups alternate above/below their points
            ax.annotate(text, (10 ** lfq, mu), textcoords="offset points", xytext=(6, -8 if below else 6),
                        va="top" if below else "bottom", fontsize=8)
        for p in points:
            if p["kind"] == "reference":
                ax.scatter(p["fq"], p["mu"], s=70, marker="*", color="0.45", zorder=2)
                ax.annotate(p["name"], (p["fq"], p["mu"]), textcoords="offset points", xytext=(6, -11),
                            fontsize=8, color="0.35")
        ax.set_xscale("log")
        if points:
            lo = min(p["fq"] for p in points)
            ax.set_xlim(lo / 10, 10.0)
            mus = [p["mu"] for p in points]
            pad = max(0.02, 0.1 * (max(mus) - min(mus)))
            ax.set_ylim(max(0.0, min(mus) - pad), min(1.0, max(mus) + pad) if max(mus) + pad <= 1.0 else max(mus) + pad)
        else:
            ax.text(0.5, 0.5, "no method has both forget quality and model utility", transform=ax.transAxes,
                    ha="center", va="center")
        ax.axvline(0.05, color="0.7", linestyle=":", linewidth=1)
        ax.set_xlabel("forget quality (KS p-value vs retain model, log scale; higher is better)")
        ax.set_ylabel("model utility (higher is better)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        if methods:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
