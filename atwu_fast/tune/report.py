"""What a study leaves behind: ``best.json`` (the setting, its objective and its fresh-seed results),
``trials.jsonl`` (every trial), ``report.md`` (the best trial, parameter importance, the fresh-seed
means with 95 % t-intervals) and ``tradeoff.png`` (forget quality against model utility of every trial)."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna

from ..data.io import atomic_write_json, atomic_write_text

SUMMARY = ("forget_quality", "model_utility", "extraction_strength", "span_auroc", "forget_acc", "retain_acc",
           "leak_worst", "leak_retain")  # fresh seeds run with generation, so the leak metrics are there


def interval(values: list[float]) -> tuple[float, float, int]:
    """Mean and the half-width of its 95 % t-interval (0 for fewer than two values)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), 0
    if x.size < 2:
        return float(x.mean()), 0.0, 1
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)), int(x.size)


def fresh_summary(fresh: dict[int, dict]) -> dict:
    """Per metric: mean ± 95 % CI over the fresh seeds (forget quality on a log10 scale)."""
    out = {}
    for key in SUMMARY:
        values = [m.get(key) for m in fresh.values() if "diverged" not in m]
        if key == "forget_quality":
            values = [math.log10(max(v, 1e-300)) for v in values if v is not None]
            key = "log10_forget_quality"
        mean, half, n = interval(values)
        if n:
            out[key] = {"mean": mean, "ci95": half, "n": n}
    out["diverged_seeds"] = [s for s, m in fresh.items() if "diverged" in m]
    return out


def importances(study: optuna.Study) -> dict[str, float]:
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):  # too few finished trials, or a constant parameter
        return {}


def trade_off_plot(study: optuna.Study, path: Path, level: float) -> Path | None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    points = []
    for t in study.trials:
        for key, value in t.user_attrs.items():
            if key.startswith("seed") and value.get("forget_quality") is not None:
                points.append((t.number, max(value["forget_quality"], 1e-30), value.get("model_utility")))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=110)
    try:
        numbers, fq, mu = zip(*points)
        art = ax.scatter(fq, mu, c=numbers, cmap="viridis", s=28)
        fig.colorbar(art, ax=ax, label="trial")
        ax.axvline(level, color="0.5", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("forget quality (log scale)")
        ax.set_ylabel("model utility")
        ax.set_title(f"{study.study_name}: every trial and tuning seed")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def write_report(out_dir: Path, study: optuna.Study, method: str, best: dict, fresh: dict[int, dict], opts,
                 command: str) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in finished)
    rows = "\n".join(
        json.dumps({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                                  **t.user_attrs}) for t in study.trials)
    atomic_write_text(out_dir / "trials.jsonl", rows + "\n")
    summary = fresh_summary(fresh)
    doc = {"method": method, "study": study.study_name, "objective": opts.objective, "fq_level": opts.fq_level,
           "tuning_seeds": list(opts.seeds), "trials": len(finished), "pruned": pruned,
           "best_value": study.best_value, "best_trial": study.best_trial.number, "params": best,
           "importance": importances(study), "fresh_seeds": {str(s): m for s, m in fresh.items()},
           "fresh": summary, "command": command}
    atomic_write_json(out_dir / "best.json", doc)
    plot = trade_off_plot(study, out_dir / "tradeoff.png", opts.fq_level)
    lines = [f"# Tuning {method}", "", f"`{command}`", "",
             f"{len(finished)} trials ({pruned} pruned: diverged), objective {opts.objective}"
             + (f" (forget quality >= {opts.fq_level:g})" if opts.objective == "mu_at_fq" else "")
             + f", tuning seeds {list(opts.seeds)}.", "",
             f"Best trial {study.best_trial.number}: objective {study.best_value:.4f}", "",
             "| parameter | value | importance |", "|---|---|---|"]
    imp = doc["importance"]
    lines += [f"| {k} | {v:.4g} | {imp.get(k, float('nan')):.2f} |" if isinstance(v, float)
              else f"| {k} | {v} | {imp.get(k, float('nan')):.2f} |" for k, v in best.items()]
    lines += ["", f"Re-evaluated on fresh seeds {list(fresh)} (mean ± 95 % t-interval):", "",
              "| metric | mean | ± | seeds |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.4g} | {v['ci95']:.2g} | {v['n']} |" for k, v in summary.items()
              if isinstance(v, dict)]
    if summary["diverged_seeds"]:
        lines += ["", f"Diverged on seeds {summary['diverged_seeds']}."]
    if plot is not None:
        lines += ["", "![trade-off](tradeoff.png)"]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    return doc


@contextmanager
def _locked_folder(folder: Path):
    """Hold an exclusive lock on ``folder`` (POSIX; elsewhere nothing is locked): studies run side by side
    that record into one file must not lose each other's entries between read and replace."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def record_tuned(path: Path, method: str, doc: dict) -> None:
    """Record the study's best setting for ``method`` in a tuned-values file (created when missing), with
    the command that produced it and its fresh-seed summary. The read, update and replace hold a lock on the
    file's folder, so parallel studies recording into one file keep every entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked_folder(path.parent):
        _update_tuned(path, method, doc)


def _update_tuned(path: Path, method: str, doc: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("methods", {})[method] = doc["params"]
    data.setdefault("studies", {})[method] = {"command": doc["command"], "objective": doc["objective"],
                                              "best_value": doc["best_value"], "fresh": doc["fresh"]}
    data["methods"] = dict(sorted(data["methods"].items()))
    data["studies"] = dict(sorted(data["studies"].items()))
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
