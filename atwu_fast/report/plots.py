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


def comparison_figure(results: dict[str, dict], reference: dict[str, dict] | None = None,
                      title: str = "Forget quality vs model utility"):
    """The trade-off figure: forget quality (log x) against model utility (y), one labelled point per
    method, the retain and target models (``reference``) as grey stars. The legend is framed and lies
    outside the data area (right of the axes), so none of its markers can be read as a data point;
    the x axis ends just right of 1, the largest forget quality there is."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    points = tradeoff_points(results, reference)
    fig, ax = plt.subplots(figsize=(8.0, 4.8), dpi=120)
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
            ax.annotate(p["name"], (p["fq"], p["mu"]), textcoords="offset points", xytext=(-6, -11), ha="right",
                        fontsize=8, color="0.35")
    ax.set_xscale("log")
    if points:
        lo = min(p["fq"] for p in points)
        ax.set_xlim(lo / 10, 2.0)
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
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=True,
                  title="methods", title_fontsize=8)
    fig.tight_layout()
    return fig


def comparison_plot(results: dict[str, dict], path: str | Path, reference: dict[str, dict] | None = None,
                    title: str = "Forget quality vs model utility") -> Path:
    """Write :func:`comparison_figure` as a PNG (cropped to everything drawn, the legend included)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = comparison_figure(results, reference, title)
    try:
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
