"""The original TOFU release's evaluation logs (locuslab/tofu): reading, row checks and re-scoring.

Layout. ``evaluate_util.py`` writes one file per evaluated set, each mapping a metric name to
``{"<row>": value}``: ``eval_log_forget.json`` (forgetNN_perturbed), ``eval_log.json``
(retain_perturbed), ``eval_real_author_wo_options.json``, ``eval_real_world_wo_options.json``, and
``eval_log_aggregated.json`` holding the four keyed by those file names. Its default config evaluates
the first ``ds_size: 300`` rows of every set (forget10 and retain_perturbed have 400).

Which stored loss each metric reads. Every set is run through the model in up to three batched passes:
the ``answer`` with batch size B (``avg_gt_loss`` = ``gt_loss / num_token_gt``, same pass, equal up to
float32 rounding), the "base" answer with batch size B // 4 (``avg_paraphrased_loss``: the paraphrased
answer on forget / retain, the answer itself again on real authors / world facts), and the perturbed
answers with B // 4 (``average_perturb_loss``, one mean token loss per perturbed answer). On real
authors and world facts the answer's loss is therefore stored twice, from two passes with different
padding (the published bf16 Llama-2 logs differ by up to 0.12 nats on 18-44 of the rows; Phi-1.5 by
≤ 1e-6). ``aggregate_eval_stat.py`` reads:

* Prob: ``avg_gt_loss`` — mean_i exp(−avg_gt_loss_i) on forget / retain; on real authors / world facts
  mean_i p_i / (p_i + Σ_j exp(−average_perturb_loss_ij)) with p_i = exp(−avg_gt_loss_i) (no epsilon).
* ROUGE: mean ``rougeL_recall`` (rouge_score, stemmed, recall of the greedy generation).
* Truth ratio and forget quality: ``avg_paraphrased_loss`` and ``average_perturb_loss``; per row
  R_i = exp(avg_paraphrased_loss_i − mean_j average_perturb_loss_ij) (perturbed / correct, i.e. the
  geometric mean of the perturbed normalised probabilities; the script's ``curr_stat_1`` is 1/R_i).
  Forget: mean_i min(R_i, 1/R_i); other sets: mean_i max(0, 1 − R_i).
* Forget quality: ``scipy.stats.ks_2samp`` p-value of the forget R of the model vs the retain model's.
* Model utility: ``scipy.stats.hmean`` of the nine non-forget values (retain, real authors, world facts ×
  Prob, ROUGE, truth ratio).

The same release's ``utils.get_model_utility`` (used by the in-training evaluation in ``dataloader.py``)
takes the arithmetic mean of the perturbed probabilities instead, R_i = mean_j exp(−L_ij) /
exp(−L_para_i); ``perturbed_mean="arithmetic"`` reproduces it. Forget quality is geometric in both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...eval import metrics
from ...eval.logs import RetainReference, find_eval_file

AGGREGATED = "eval_log_aggregated.json"
TASK_FILES = {"forget": "eval_log_forget.json", "retain": "eval_log.json",
              "real_authors": "eval_real_author_wo_options.json", "world_facts": "eval_real_world_wo_options.json"}
READ_KEYS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall")
# set -> (prefix, Prob key) in our TOFU_EVAL names; the truth-ratio key follows the metric's aggregation
SET_KEYS = {"forget": ("forget", "forget_Q_A_Prob", "forget_truth_ratio"),
            "retain": ("retain", "retain_Q_A_Prob", "retain_Truth_Ratio"),
            "real_authors": ("ra", "ra_Q_A_Prob_normalised", "ra_Truth_Ratio"),
            "world_facts": ("wf", "wf_Q_A_Prob_normalised", "wf_Truth_Ratio")}
_SET_NAMES = {"forget": "Forget", "retain": "Retain", "real_authors": "Real Authors", "world_facts": "Real World"}
# our key -> the column aggregate_eval_stat.py writes (its CSV and the TOFU leaderboard)
ORIGINAL_COLUMNS = {
    **{key: f"{col} {_SET_NAMES[s]}" for s, (prefix, prob, tr) in SET_KEYS.items()
       for key, col in ((prob, "Prob."), (f"{prefix}_Q_A_ROUGE", "ROUGE"), (tr, "Truth Ratio"))},
    "model_utility": "Model Utility", "forget_quality": "Forget Quality",
}
PERTURBED_MEANS = ("geometric", "arithmetic")


class LogFormatError(ValueError):
    """A file that is not an evaluation log of a known layout (a user-caused error, one line)."""


@dataclass
class TaskLog:
    """One evaluated set of an original log, rows in index order."""

    answer_loss: np.ndarray  # avg_gt_loss [n]
    base_loss: np.ndarray  # avg_paraphrased_loss [n]
    perturb_loss: np.ndarray  # average_perturb_loss [n, k]
    rouge_l: np.ndarray  # rougeL_recall [n]
    prompts: list[str] | None = None  # generated_text[i][0], the prompt that holds row i's question

    def __len__(self) -> int:
        return self.answer_loss.shape[0]


# --------------------------------------------------------------------------- reading


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LogFormatError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise LogFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def log_layout(data) -> str | None:
    """``"open-unlearning"`` (TOFU_EVAL.json), ``"original-aggregated"``, ``"original-task"`` or None."""
    if not isinstance(data, dict) or not data:
        return None
    if all(k in TASK_FILES.values() for k in data) and all(isinstance(v, dict) for v in data.values()):
        return "original-aggregated"
    if "avg_paraphrased_loss" in data and "average_perturb_loss" in data:
        return "original-task"
    if any(isinstance(v, dict) and "agg_value" in v for v in data.values()):
        return "open-unlearning"
    return None


def _column(data: dict, key: str, where: str) -> dict:
    col = data[key]
    if not isinstance(col, dict) or not col:
        raise LogFormatError(f"{where}: '{key}' is not a non-empty object of rows")
    return col


def read_task(data, where: str) -> TaskLog:
    """One per-set dict of the original layout (``metric -> {"<row>": value}``)."""
    if not isinstance(data, dict):
        raise LogFormatError(f"{where}: not an original TOFU evaluation log (expected an object of metrics)")
    missing = [k for k in READ_KEYS if k not in data]
    if missing:
        raise LogFormatError(f"{where}: lacks {', '.join(missing)}: not an original TOFU evaluation log")
    rows = list(_column(data, READ_KEYS[0], where))
    try:
        order = sorted(rows, key=int)
    except ValueError:
        raise LogFormatError(f"{where}: row keys must be integers") from None
    for key in READ_KEYS[1:]:
        if set(_column(data, key, where)) != set(rows):
            raise LogFormatError(f"{where}: '{key}' and '{READ_KEYS[0]}' cover different rows")
    try:
        answer, base, rouge = (np.array([data[k][i] for i in order], dtype=np.float64)
                               for k in ("avg_gt_loss", "avg_paraphrased_loss", "rougeL_recall"))
        perturb = np.array([data["average_perturb_loss"][i] for i in order], dtype=np.float64)
    except (TypeError, ValueError):
        raise LogFormatError(f"{where}: non-numeric or ragged loss values") from None
    if perturb.ndim != 2 or perturb.shape[1] == 0:
        raise LogFormatError(f"{where}: 'average_perturb_loss' must hold a non-empty list per row")
    prompts = None
    gen = data.get("generated_text")
    if isinstance(gen, dict) and set(gen) == set(rows):
        if all(isinstance(gen[i], list) and gen[i] and isinstance(gen[i][0], str) for i in order):
            prompts = [gen[i][0] for i in order]
    return TaskLog(answer, base, perturb, rouge, prompts)


def _from_aggregated(data: dict, where: str) -> dict[str, TaskLog]:
    by_file = {f: s for s, f in TASK_FILES.items()}
    return {by_file[f]: read_task(v, f"{where}[{f}]") for f, v in data.items()}


def original_dir(directory: Path) -> Path | None:
    """Where the original logs are: ``directory`` itself or its single ``eval_results/ds_size*``."""
    names = (AGGREGATED, *TASK_FILES.values())
    if any((directory / n).is_file() for n in names):
        return directory
    found = [d for d in sorted(directory.glob("eval_results/ds_size*")) if any((d / n).is_file() for n in names)]
    if len(found) > 1:
        raise LogFormatError(f"{directory}: several eval_results/ds_size* folders; pass one of them")
    return found[0] if found else None


def read_original_logs(path: str | os.PathLike) -> dict[str, TaskLog]:
    """The original layout as ``{set: TaskLog}`` (sets: forget, retain, real_authors, world_facts).

    ``path``: a directory of the per-set files and/or ``eval_log_aggregated.json`` (a per-set file
    wins over the aggregated copy), the aggregated file, or one per-set file under its original name.
    """
    path = Path(path)
    if path.is_dir():
        directory = original_dir(path)
        if directory is None:
            raise LogFormatError(f"{path}: no {AGGREGATED} or {TASK_FILES['forget']} (the original TOFU layout)")
        tasks = {}
        if (directory / AGGREGATED).is_file():
            agg = _read_json(directory / AGGREGATED)
            if log_layout(agg) != "original-aggregated":
                raise LogFormatError(f"{directory / AGGREGATED}: not an aggregated original TOFU log")
            tasks.update(_from_aggregated(agg, str(directory / AGGREGATED)))
        for name, file in TASK_FILES.items():
            if (directory / file).is_file():
                tasks[name] = read_task(_read_json(directory / file), str(directory / file))
        return tasks
    if not path.is_file():
        raise FileNotFoundError(f"logs not found: {path}")
    data = _read_json(path)
    layout = log_layout(data)
    if layout == "original-aggregated":
        return _from_aggregated(data, str(path))
    if layout == "original-task":
        by_file = {f: s for s, f in TASK_FILES.items()}
        if path.name not in by_file:
            raise LogFormatError(f"{path}: a per-set original TOFU log whose set is unknown (only the file name says "
                                 f"it: {', '.join(TASK_FILES.values())}); pass its folder or {AGGREGATED}")
        return {by_file[path.name]: read_task(data, str(path))}
    raise LogFormatError(f"{path}: not an original TOFU evaluation log ({AGGREGATED} or eval_log*.json)")


# --------------------------------------------------------------------------- retain reference


def truth_ratios(task: TaskLog, perturbed_mean: str = "geometric") -> np.ndarray:
    """Per-row R_i = perturbed / correct normalised probability, without an epsilon (the original's).

    geometric: exp(L_base_i − mean_j L_pert_ij); arithmetic: mean_j exp(−L_pert_ij) / exp(−L_base_i).
    """
    if perturbed_mean == "geometric":
        return np.exp(task.base_loss - task.perturb_loss.mean(axis=1))
    if perturbed_mean == "arithmetic":
        return np.exp(-task.perturb_loss).mean(axis=1) / np.exp(-task.base_loss)
    raise ValueError(f"perturbed_mean must be one of {', '.join(PERTURBED_MEANS)}, not '{perturbed_mean}'")


def reference_from_original(tasks: dict[str, TaskLog], source: str = "") -> RetainReference:
    """Forget quality's reference from a retain model's original log (no MIA there: privleak gets none)."""
    forget = tasks.get("forget")
    if forget is None:
        raise LogFormatError(f"{source}: no {TASK_FILES['forget']} in these logs: forget quality needs the retain "
                             "model's forget truth ratios")
    return RetainReference(truth_ratios(forget), None, source, forget_rows=len(forget),
                           forget_prompts=forget.prompts, layout="original")


def load_reference(path: str | os.PathLike) -> RetainReference:
    """A :class:`RetainReference` from open-unlearning's ``TOFU_EVAL.json`` (file or folder), or the
    original release's logs (a folder, ``eval_log_aggregated.json`` or ``eval_log_forget.json``).
    Anything else raises a one-line :class:`LogFormatError` (``FileNotFoundError`` when missing)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"retain logs not found: {path}")
    if path.is_dir():
        if any(path.glob("*_EVAL.json")):
            file = find_eval_file(path)
        elif original_dir(path) is not None:
            return reference_from_original(read_original_logs(path), str(path))
        else:
            raise LogFormatError(f"{path}: no *_EVAL.json, {AGGREGATED} or {TASK_FILES['forget']} in it")
    else:
        file = path
    data = _read_json(file)
    layout = log_layout(data)
    if layout in ("original-aggregated", "original-task"):
        return reference_from_original(read_original_logs(file), str(file))
    if layout != "open-unlearning":
        raise LogFormatError(f"{file}: not a TOFU evaluation log (expected open-unlearning's TOFU_EVAL.json or the "
                             f"original release's {AGGREGATED} / {TASK_FILES['forget']})")
    try:
        ref = RetainReference.from_logs(data, str(file))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LogFormatError(f"{file}: malformed per-row values ({type(exc).__name__}: {exc})") from None
    if ref.forget_truth_ratio is None and ref.mia_min_k_auc is None:
        raise LogFormatError(f"{file}: has neither forget_truth_ratio rows nor mia_min_k: nothing for forget quality "
                             "or privleak")
    return ref


# --------------------------------------------------------------------------- row matching


def template_questions(prompts: Sequence[str]) -> list[str] | None:
    """The prompts without the text every one of them starts and ends with (the prompt template).

    What is left is each row's question, perhaps minus characters all questions share at their ends
    ("Wh", "?"): still contained in the question, so a containment check errs towards accepting. None
    with fewer than two prompts (no template to see).
    """
    if len(prompts) < 2:
        return None
    head = os.path.commonprefix(list(prompts))
    tail = os.path.commonprefix([p[::-1] for p in prompts])
    return [p[len(head):len(p) - len(tail)] if len(head) + len(tail) <= len(p) else "" for p in prompts]


def _short(text: str, n: int = 70) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def check_forget_rows(reference: RetainReference, n_rows: int, questions: Sequence[str] | None = None) -> None:
    """Raise a one-line ValueError unless ``reference`` holds the evaluated forget rows.

    ``n_rows`` must equal the reference's forget row count; with ``questions`` (row i's question) and
    prompts in the reference, row i's logged prompt must contain question i. Forget quality otherwise
    runs the KS test on truth ratios of different rows. A reference without forget rows passes.
    """
    if reference.forget_truth_ratio is None:
        return
    src = reference.source or "retain logs"
    n_ref = reference.forget_rows if reference.forget_rows is not None else reference.forget_truth_ratio.size
    if n_ref != n_rows:
        raise ValueError(f"{src}: the retain logs hold {n_ref} forget rows but {n_rows} were evaluated; forget quality "
                         "compares the same rows (the original release evaluated the first 300: ds_size 300)")
    prompts = reference.forget_prompts
    if questions is None or prompts is None:
        return
    if len(questions) != n_rows or len(prompts) != n_rows:
        raise ValueError(f"{src}: {len(questions)} questions / {len(prompts)} logged prompts for {n_rows} forget rows")
    for i, (q, p) in enumerate(zip(questions, prompts)):
        if q.strip() not in p:
            raise ValueError(f"{src}: forget row {i} of the retain logs is another question ({_short(p)} does not "
                             f"contain {_short(q.strip())}); forget quality compares the same rows")


def limit_rows(sets: dict[str, list[dict]], ds_size: int | None) -> dict[str, list[dict]]:
    """The first ``ds_size`` rows of every evaluated set (the original's ``ds_size``; 0 / None: all).

    With 300, forget10 and retain_perturbed (400 rows) keep their first 300, as in the published logs;
    real authors (100), world facts (117) and the smaller forget splits are unchanged.
    """
    if ds_size is None or ds_size == 0:
        return dict(sets)
    if isinstance(ds_size, bool) or not isinstance(ds_size, int) or ds_size < 0:
        raise ValueError(f"ds_size must be a non-negative integer, not {ds_size!r}")
    return {name: rows[:ds_size] for name, rows in sets.items()}


# --------------------------------------------------------------------------- re-scoring


def _set_scores(name: str, task: TaskLog, perturbed_mean: str) -> dict[str, float]:
    prefix, prob_key, tr_key = SET_KEYS[name]
    p = np.exp(-task.answer_loss)
    if name in ("forget", "retain"):
        prob = p.mean()
    else:
        prob = np.mean(p / (p + np.exp(-task.perturb_loss).sum(axis=1)))
    r = truth_ratios(task, perturbed_mean)
    tr = np.mean(np.minimum(r, 1.0 / r)) if name == "forget" else np.mean(np.maximum(0.0, 1.0 - r))
    return {prob_key: float(prob), f"{prefix}_Q_A_ROUGE": float(task.rouge_l.mean()), tr_key: float(tr)}


def score_original(tasks: dict[str, TaskLog], reference: RetainReference | None = None,
                   perturbed_mean: str = "geometric") -> dict[str, float | None]:
    """Every number ``aggregate_eval_stat.py`` reports, from a published log and no model.

    Returns our TOFU_EVAL names (:data:`ORIGINAL_COLUMNS` maps them to the script's columns): per set
    Prob / ROUGE / truth ratio, ``model_utility`` (None unless retain, real authors and world facts
    are all there) and ``forget_quality`` (None without a reference with forget truth ratios). The
    reference's forget rows must be this log's (count, and questions where both logs carry prompts),
    else a one-line ValueError. ``perturbed_mean``: see the module docstring.
    """
    if perturbed_mean not in PERTURBED_MEANS:
        raise ValueError(f"perturbed_mean must be one of {', '.join(PERTURBED_MEANS)}, not '{perturbed_mean}'")
    out: dict[str, float | None] = {}
    for name in SET_KEYS:
        if name in tasks:
            out.update(_set_scores(name, tasks[name], perturbed_mean))
    utility = [out.get(k) for s in ("retain", "real_authors", "world_facts")
               for k in (SET_KEYS[s][1], f"{SET_KEYS[s][0]}_Q_A_ROUGE", SET_KEYS[s][2])]
    out["model_utility"] = None if None in utility else metrics.model_utility(utility)
    forget = tasks.get("forget")
    fq = None
    if forget is not None and reference is not None and reference.forget_truth_ratio is not None:
        questions = template_questions(forget.prompts) if forget.prompts else None
        check_forget_rows(reference, len(forget), questions)
        fq = metrics.forget_quality(truth_ratios(forget), reference.forget_truth_ratio)
    out["forget_quality"] = fq
    return out


def rescore(logs: str | os.PathLike, retain_logs: str | os.PathLike | None = None,
            perturbed_mean: str = "geometric") -> dict[str, float | None]:
    """:func:`score_original` of the original log at ``logs`` against the retain logs at ``retain_logs``
    (any layout :func:`load_reference` reads; None: no forget quality)."""
    reference = load_reference(retain_logs) if retain_logs else None
    return score_original(read_original_logs(logs), reference, perturbed_mean)
