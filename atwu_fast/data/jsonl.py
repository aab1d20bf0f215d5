"""Generic forget/retain sets from JSONL (or JSON / parquet) files.

Each row is a QA pair ``{"question", "answer"}`` or a raw ``{"text"}``, optionally with
``target_words`` (ground-truth forget spans). Evaluation uses the same rows.
"""

from __future__ import annotations

from .registry import BenchmarkData, DataError, attach_target_words, read_file, register


def _check(rows: list[dict], path: str) -> list[dict]:
    if not rows:
        raise DataError(f"{path}: no rows")
    for i, r in enumerate(rows):
        if "question" in r or "answer" in r:
            for key in ("question", "answer"):
                if not isinstance(r.get(key), str) or not r[key].strip():
                    raise DataError(f"{path}: row {i}: '{key}' must be a non-empty string")
        elif "text" in r:
            if not isinstance(r["text"], str) or not r["text"].strip():
                raise DataError(f"{path}: row {i}: 'text' must be a non-empty string")
        else:
            raise DataError(f"{path}: row {i} needs question+answer or text")
        words = r.get("target_words", [])
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"{path}: row {i}: 'target_words' must be a list of strings")
    return rows


def load_jsonl_sets(forget_file: str, retain_file: str, spans_file: str = "") -> BenchmarkData:
    if not forget_file or not retain_file:
        raise DataError("the jsonl benchmark needs --benchmark.forget_file and --benchmark.retain_file")
    forget = _check(read_file(forget_file), forget_file)
    retain = _check(read_file(retain_file), retain_file)
    if spans_file:
        forget = attach_target_words(forget, read_file(spans_file), spans_file)
    return BenchmarkData("jsonl", forget, retain, {"forget": forget, "retain": retain},
                         {"forget_file": forget_file, "retain_file": retain_file})


@register("jsonl")
def load_jsonl(cfg, with_eval: bool = True) -> BenchmarkData:
    return load_jsonl_sets(cfg.forget_file, cfg.retain_file, cfg.spans_file)
