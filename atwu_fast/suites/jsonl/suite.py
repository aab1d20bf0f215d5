"""Generic forget/retain sets from JSONL (or JSON / parquet) files.

Each row is a QA pair ``{"question", "answer"}`` or a raw ``{"text"}``, optionally with
``target_words`` (ground-truth forget spans). Evaluation uses the same rows.
"""

from __future__ import annotations

from ...data.readers import DataError, attach_target_words, read_file
from ...model.distributed import SINGLE, DistContext
from ..base import BenchmarkData, Column
from ..real import SPAN_COLUMNS, TRAIN_COLUMNS, RealSuite
from .config import JsonlConfig
from .evaluate import evaluate_jsonl


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
        raise DataError("the jsonl benchmark needs --jsonl.forget_file and --jsonl.retain_file")
    forget = _check(read_file(forget_file), forget_file)
    retain = _check(read_file(retain_file), retain_file)
    if spans_file:
        forget = attach_target_words(forget, read_file(spans_file), spans_file)
    return BenchmarkData("jsonl", forget, retain, {"forget": forget, "retain": retain},
                         {"forget_file": forget_file, "retain_file": retain_file})


class JsonlSuite(RealSuite):
    name, log_name = "jsonl", "JSONL"
    sections = {"jsonl": JsonlConfig}
    columns: list[Column] = [
        ("forget_Q_A_Prob", "forget prob", "{:.3f}"), ("forget_Q_A_ROUGE", "forget RL", "{:.3f}"),
        ("extraction_strength", "ES", "{:.3f}"), ("exact_memorization", "EM", "{:.3f}"),
        ("forget_text_loss", "forget text NLL", "{:.3f}"), ("retain_Q_A_Prob", "retain prob", "{:.3f}"),
        ("retain_Q_A_ROUGE", "retain RL", "{:.3f}"), ("retain_text_loss", "retain text NLL", "{:.3f}"),
        *SPAN_COLUMNS, *TRAIN_COLUMNS]

    def read(self, with_eval: bool = True) -> BenchmarkData:
        return load_jsonl_sets(self.cfg.jsonl.forget_file, self.cfg.jsonl.retain_file, self.bcfg.spans_file)

    def evaluate_logs(self, model, retain, ctx: DistContext = SINGLE) -> dict:
        return evaluate_jsonl(model, self.tokenizer, self.fmt, self.data.eval_sets, self.eval_batch_size,
                              self.max_new_tokens, ctx=ctx)
