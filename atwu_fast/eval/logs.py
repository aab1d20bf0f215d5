"""Evaluation logs in the reference harness's layout (open-unlearning ``TOFU_EVAL.json`` /
``TOFU_SUMMARY.json``).

``<NAME>_EVAL.json`` maps each metric name to ``{"agg_value": ..., "value_by_index": {"<row>": {...}}}``
(keys sorted, indent 4; row indices are strings after a JSON round trip). Per-row entries:
probabilities ``{"prob", "avg_loss"}`` (lists over the alternatives for perturbed answers),
truth ratio / ES / EM ``{"score"}``, ROUGE ``{"rouge1_recall", "rougeL_f1", "rougeL_recall",
"input", "ground_truth", "generation"}``. MIA metrics add ``"auc"`` and per-set ``"forget"`` /
``"holdout"`` blocks. ``<NAME>_SUMMARY.json`` maps each metric to its ``agg_value`` (None omitted).

A published retain-model ``TOFU_EVAL.json`` supplies forget quality's reference truth ratios
(``forget_truth_ratio.value_by_index[*].score``) and privleak's reference AUC
(``mia_min_k.agg_value``), so no retain model has to be trained or evaluated. The original TOFU
release's logs (``eval_log_aggregated.json`` and friends, :mod:`.tofu_original`) supply the truth ratios.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import atomic_write_text


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def by_index(values: list[dict]) -> dict[str, dict]:
    return {str(i): v for i, v in enumerate(values)}


def entry(agg_value, value_by_index: dict | None = None, **extra) -> dict:
    out: dict[str, Any] = {"agg_value": None if agg_value is None else float(agg_value)}
    if value_by_index is not None:
        out["value_by_index"] = value_by_index
    out.update(extra)
    return out


def summarize(logs: dict) -> dict:
    """metric → agg_value for every metric with a non-None agg_value (the SUMMARY file)."""
    return {k: v["agg_value"] for k, v in sorted(logs.items())
            if isinstance(v, dict) and v.get("agg_value") is not None}


def dumps(data: dict) -> str:
    return json.dumps(_plain(dict(sorted(data.items()))), indent=4)


def save_logs(out_dir: str | Path, logs: dict, name: str = "TOFU") -> tuple[Path, Path]:
    """Write ``<name>_EVAL.json`` and ``<name>_SUMMARY.json`` under ``out_dir``."""
    out_dir = Path(out_dir)
    eval_path, summary_path = out_dir / f"{name}_EVAL.json", out_dir / f"{name}_SUMMARY.json"
    atomic_write_text(eval_path, dumps(logs) + "\n")
    atomic_write_text(summary_path, dumps(summarize(logs)) + "\n")
    return eval_path, summary_path


def find_eval_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*_EVAL.json"))
        if not found:
            raise FileNotFoundError(f"no *_EVAL.json in {path}")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"retain logs not found: {path}")
    return path


def load_logs(path: str | Path) -> dict:
    """A ``*_EVAL.json`` file (or the directory holding it)."""
    return json.loads(find_eval_file(path).read_text())


def index_values(metric: dict, key: str = "score") -> np.ndarray:
    """``value_by_index[*][key]`` ordered by row index (None → NaN)."""
    vbi = metric.get("value_by_index") or {}
    vals = [vbi[k][key] if vbi[k] is not None else None for k in sorted(vbi, key=int)]
    return np.array([np.nan if v is None else v for v in vals], dtype=np.float64)


@dataclass
class RetainReference:
    """What forget quality and privleak need from a retain model's logs.

    ``forget_rows``: how many forget rows the logs evaluated; ``forget_prompts``: the logged prompt of
    each forget row (it contains the row's question), when the logs carry them. Both let forget quality
    refuse logs of other rows (:func:`~atwu_fast.suites.tofu.original_logs.check_forget_rows`).
    """

    forget_truth_ratio: np.ndarray | None = None
    mia_min_k_auc: float | None = None
    source: str = ""
    forget_rows: int | None = None
    forget_prompts: list[str] | None = None
    layout: str = "open-unlearning"

    @classmethod
    def from_logs(cls, logs: dict, source: str = "") -> RetainReference:
        tr = logs.get("forget_truth_ratio") or logs.get("forget_Truth_Ratio")
        ratios = index_values(tr) if tr and tr.get("value_by_index") else None
        rows = None if ratios is None else ratios.size
        if ratios is not None:
            ratios = ratios[~np.isnan(ratios)]
        mia = logs.get("mia_min_k")
        auc = mia.get("agg_value") if isinstance(mia, dict) else None
        auc = None if auc is None or (isinstance(auc, float) and math.isnan(auc)) else float(auc)
        rouge = (logs.get("forget_Q_A_ROUGE") or {}).get("value_by_index") or {}
        prompts = [(rouge[k] or {}).get("input") for k in sorted(rouge, key=int)]
        prompts = prompts if prompts and len(prompts) == rows and all(isinstance(p, str) for p in prompts) else None
        return cls(ratios, auc, source, rows, prompts)
