"""Evaluation of generic forget/retain sets: QA rows get TOFU's probability, ROUGE-L recall (forget:
extraction strength and exact memorisation); raw texts their mean token NLL."""

from __future__ import annotations

import numpy as np

from ...data.formatting import Formatter
from ...data.labels import IGNORE_INDEX, UNIQUE
from ...eval import metrics
from ...eval.logs import by_index, entry
from ...eval.scoring import row_tokens
from ...model.distributed import SINGLE, DistContext
from ..tofu.evaluate import TofuScorer, rouge_entries, score_entry


def evaluate_jsonl(model, tokenizer, fmt: Formatter, sets: dict, batch_size: int, max_new_tokens: int,
                   generate_text: bool = True, ctx: DistContext = SINGLE) -> dict:
    """Per set: QA rows → Prob and ROUGE-L recall (forget: also ES and EM); text rows → mean NLL. Every
    forward and generation is sharded over the ranks of a distributed ``ctx``."""
    logs: dict = {}
    s = TofuScorer(model, tokenizer, fmt, batch_size, max_new_tokens, ctx)
    for name in ("forget", "retain"):
        rows = sets.get(name) or []
        qa = [r for r in rows if "question" in r]
        texts = [r for r in rows if "question" not in r]
        if qa:
            toks = s.tokens([(r["question"], r["answer"]) for r in qa], argmax=name == "forget")
            probs = metrics.mean_nll_to_prob(toks.mean_nll())
            logs[f"{name}_Q_A_Prob"] = entry(probs.mean(), by_index(
                [{"prob": float(p), "avg_loss": float(a)} for p, a in zip(probs, toks.mean_nll())]))
            if name == "forget":
                preds, labels = [a[:-1] for a in toks.argmax], [y[:-1] for y in toks.labels]
                logs["extraction_strength"] = score_entry(metrics.extraction_strength(preds, labels))
                logs["exact_memorization"] = score_entry(metrics.exact_memorization(preds, labels))
            if generate_text:
                gens, inputs = s.generations(qa)
                vals = rouge_entries(gens, [r["answer"] for r in qa], inputs)
                logs[f"{name}_Q_A_ROUGE"] = entry(np.mean([v["rougeL_recall"] for v in vals]), by_index(vals))
        if texts:
            toks = row_tokens(model, [fmt.text(r["text"]) for r in texts], tokenizer.pad_token_id, batch_size,
                              ctx=ctx)
            nll = toks.mean_nll()
            logs[f"{name}_text_loss"] = entry(nll.mean(), by_index([{"avg_loss": float(v)} for v in nll]))
    forget = sets.get("forget") or []
    if forget and all("target_words" in r for r in forget):
        enc = [fmt.row(r) for r in forget]
        toks = row_tokens(model, enc, tokenizer.pad_token_id, batch_size, ctx=ctx)
        labels = [(np.array(e["span_kind"])[np.array(e["labels"]) != IGNORE_INDEX] == UNIQUE).astype(int) for e in enc]
        logs["span_auroc_nll"] = entry(metrics.span_auroc(toks.nll, labels))
        logs["span_ap_nll"] = entry(metrics.span_average_precision(toks.nll, labels))
    return logs
