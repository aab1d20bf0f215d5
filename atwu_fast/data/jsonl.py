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
        if not (("question" in r and "answer" in r) or "text" in r):
            raise DataError(f"{path}: row {i} needs question+answer or text")
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
