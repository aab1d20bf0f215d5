"""RWKU (hub ``jinzhuoran/RWKU`` or a local directory of the same files).

Targets: ``forget_target`` (train split, field ``target``), in file order. Batch unlearning takes
the first K. Forget corpus: ``train_positive_llama3`` (or ``_phi3``; ``subject``, ``text``), the
texts of those K targets (RWKU's GA/NPO corpus). RWKU ships no retain corpus: the retain rows are
the same corpus's texts of the next K targets (used only by methods with a retain term).
Evaluation (test split, filtered to the K subjects): ``forget_level1/2/3`` and
``neighbor_level1/2`` (``subject, query, answer, level`` and ``type`` on level 3), ``mia_forget``
and ``mia_retain`` (``subject, text``; when no ``mia_retain`` row names a chosen subject, all of
them are used).
"""

from __future__ import annotations

from ...data.readers import DataError, attach_target_words, load_rows, read_file
from ...model.distributed import SINGLE, DistContext
from ..base import BenchmarkData, Column
from ..real import SPAN_COLUMNS, TRAIN_COLUMNS, RealSuite
from .config import RwkuConfig
from .evaluate import evaluate_rwku

HUB_ID = "jinzhuoran/RWKU"
PROBE_SETS = ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2")
MIA_SETS = ("mia_forget", "mia_retain")


def targets(source: str, k: int) -> list[str]:
    rows = load_rows(source, "forget_target", "train")
    names = list(dict.fromkeys(r["target"] for r in rows))
    if k > len(names):
        raise DataError(f"RWKU has {len(names)} targets, asked for the first {k}")
    return names


def _by_subject(rows: list[dict], subjects: list[str], config: str, fields: tuple[str, ...]) -> list[dict]:
    for i, r in enumerate(rows):
        missing = [f for f in fields if f not in r]
        if missing:
            raise DataError(f"RWKU config '{config}' row {i} lacks {', '.join(missing)}")
    keep = set(subjects)
    return [r for r in rows if r.get("subject") in keep]


def load_rwku_sets(source: str = HUB_ID, k: int = 1, corpus: str = "train_positive_llama3",
                   spans_file: str = "", with_eval: bool = True) -> BenchmarkData:
    names = targets(source, k)
    chosen, retain_names = names[:k], names[k:2 * k]
    texts = load_rows(source, corpus, "train")
    forget = [{"text": r["text"], "subject": r["subject"]}
              for r in _by_subject(texts, chosen, corpus, ("subject", "text"))]
    retain = [{"text": r["text"], "subject": r["subject"]}
              for r in _by_subject(texts, retain_names, corpus, ("subject", "text"))]
    if not forget:
        raise DataError(f"RWKU corpus '{corpus}' has no text for targets {chosen}")
    if not retain:
        retain = forget[:0]
    if spans_file:
        forget = attach_target_words(forget, read_file(spans_file), spans_file)
    eval_sets = {}
    if with_eval:
        for name in PROBE_SETS:
            eval_sets[name] = _by_subject(load_rows(source, name, "test"), chosen, name, ("subject", "query", "answer"))
        eval_sets["mia_forget"] = _by_subject(load_rows(source, "mia_forget", "test"), chosen, "mia_forget",
                                              ("text",))
        mia_retain = load_rows(source, "mia_retain", "test")
        own = _by_subject(mia_retain, chosen, "mia_retain", ("text",))
        eval_sets["mia_retain"] = own or mia_retain
    return BenchmarkData("rwku", forget, retain, eval_sets, {"source": source, "targets": chosen, "corpus": corpus})


class RwkuSuite(RealSuite):
    name, log_name = "rwku", "RWKU"
    sections = {"rwku": RwkuConfig}
    default_new_tokens = 30
    columns: list[Column] = [
        ("forget_FB", "forget FB", "{:.3f}"), ("forget_QA", "forget QA", "{:.3f}"),
        ("forget_AA", "forget AA", "{:.3f}"), ("forget_all", "forget all", "{:.3f}"),
        ("neighbor_FB", "neighbour FB", "{:.3f}"), ("neighbor_QA", "neighbour QA", "{:.3f}"),
        ("neighbor_all", "neighbour all", "{:.3f}"), ("mia_FM", "MIA FM loss", "{:.3f}"),
        ("mia_RM", "MIA RM loss", "{:.3f}"), ("mia_auc_min_k", "MIA AUC min-k", "{:.3f}"),
        *SPAN_COLUMNS, *TRAIN_COLUMNS]

    def read(self, with_eval: bool = True) -> BenchmarkData:
        return load_rwku_sets(self.bcfg.data_dir or HUB_ID, self.cfg.rwku.targets, self.cfg.rwku.corpus,
                              self.bcfg.spans_file, with_eval)

    def evaluate_logs(self, model, retain, ctx: DistContext = SINGLE) -> dict:
        return evaluate_rwku(model, self.tokenizer, self.fmt, self.data.eval_sets, self.eval_batch_size,
                             self.max_new_tokens, rouge=self.cfg.rwku.rouge, ctx=ctx)
