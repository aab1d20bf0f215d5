"""``<method>/token_scores.json``: per forget answer, its tokens with the method's score of each (learned
scores, training-free weights, or the NLL increase), NLL and ground-truth span kind — what the report's
heatmaps show."""

from __future__ import annotations

import math
from pathlib import Path

from ..data.io import atomic_write_json
from ..data.labels import FACT_KIND_NAMES, IGNORE_INDEX

TOKEN_SCORES = "token_scores.json"
EOS_TEXT = "\u23ce"  # shown for the end-of-sequence token


def score_name(method) -> tuple[str, bool]:
    """(what a method's token score is, whether it is signed) for ``method`` (a methods.Method)."""
    if method.learns_weights:
        return "learned score g (ATWU scorer)", False
    if method.weight_hooks == "mask":
        return f"{method.name} token mask", False
    if method.token_weights is not None:
        return f"{method.name} token weight", False
    return "NLL increase over the target model (nats)", True


def token_score_rows(tokenizer, forget_rows: list[dict], encoded_forget: list[dict], seq, nll, span_kind,
                     scores=None, base_nll=None) -> list[dict]:
    """Per forget row: decoded answer tokens with their score, NLL, NLL change and span kind (a text
    row, with no question, shows its text as the answer).

    ``seq``, ``nll``, ``span_kind``, ``scores``, ``base_nll`` are the flat per-token tensors of
    :func:`atwu_fast.eval.spans.forget_token_view` (row-major over the encoded forget rows).
    """
    seq = seq.tolist()
    nll = nll.detach().double().tolist()
    kinds = span_kind.tolist()
    scores = scores.detach().double().tolist() if scores is not None else None
    base = base_nll.detach().double().tolist() if base_nll is not None else None
    by_row: list[list[int]] = [[] for _ in encoded_forget]
    for i, s in enumerate(seq):
        by_row[s].append(i)
    out = []
    for r, (row, enc) in enumerate(zip(forget_rows, encoded_forget)):
        ids = [t for t in enc["labels"] if t != IGNORE_INDEX]
        idx = by_row[r]
        if len(ids) != len(idx):
            raise ValueError(f"forget row {r}: {len(ids)} answer labels but {len(idx)} scored tokens")
        texts = [EOS_TEXT if t == tokenizer.eos_token_id else tokenizer.decode([t]) for t in ids]
        out.append({
            "row": r,
            "question": row.get("question", ""),
            "answer": row["answer"] if "answer" in row else row.get("text", ""),
            "tokens": texts,
            "span_kind": [int(kinds[i]) for i in idx],
            "nll": [_num(nll[i]) for i in idx],
            "nll_delta": [_num(nll[i] - base[i]) for i in idx] if base is not None else None,
            "scores": [_num(scores[i]) for i in idx] if scores is not None else None,
        })
    return out


def _num(x: float) -> float | None:
    """Six significant digits, not six decimals: saturating weights such as p^β span many orders of magnitude,
    and rounding them to 1e-6 would tie the small ones and change their ranking (their AUROC)."""
    return float(f"{float(x):.6g}") if x is not None and math.isfinite(x) else None


def token_scores_doc(method, rows: list[dict], kind_names: dict[int, str] | None = None) -> dict:
    """The ``<method>/token_scores.json`` document: which score is shown, the span kinds' names
    (default: the embedded benchmark's) and the per-row tokens."""
    name, signed = score_name(method)
    key = "scores" if method.has_weights else "nll_delta"
    doc = {"method": method.name, "score_name": name, "score_key": key, "signed": signed, "rows": rows}
    if kind_names is not None:
        doc["kind_names"] = {str(k): v for k, v in kind_names.items()}
    return doc


def kind_names_of(doc: dict) -> dict[int, str]:
    """The span-kind names a token_scores document uses."""
    names = doc.get("kind_names")
    return {int(k): v for k, v in names.items()} if names else FACT_KIND_NAMES


def save_token_scores(directory: Path, method, tokenizer, forget_rows: list[dict], encoded: list[dict], view, base,
                      kind_names: dict[int, str]) -> None:
    """Write ``token_scores.json`` from the final forget-token view (its weights when the method has
    them, else the NLL change from ``base``, the starting model's view)."""
    rows = token_score_rows(tokenizer, forget_rows, encoded, view.seq, view.nll, view.span_kind, view.weights, base.nll)
    atomic_write_json(Path(directory) / TOKEN_SCORES, token_scores_doc(method, rows, kind_names))
