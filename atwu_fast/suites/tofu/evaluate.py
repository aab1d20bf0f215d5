"""The TOFU evaluation suite with open-unlearning's metric names and semantics (docs/benchmarks.md).

Sets: ``forget`` (forgetNN_perturbed), ``retain`` (retain_perturbed), ``real_authors`` /
``world_facts`` (*_perturbed) and ``holdout`` (holdoutNN). Metrics:

* ``{forget,retain,ra,wf}_Q_A_Prob`` P̄(a|q); ``*_PARA_Prob`` / ``*_PERT_Prob`` for the
  paraphrased / perturbed answers; ``ra_/wf_Q_A_Prob_normalised``.
* ``forget_truth_ratio`` (closer_to_1_better), ``retain_/ra_/wf_Truth_Ratio`` (true_better).
* ``*_Q_A_ROUGE``: ROUGE-L recall of greedy generations.
* ``forget_quality`` (KS p-value against the retain model's forget truth ratios, from
  ``--retain-logs``), ``model_utility`` (harmonic mean of 9; of the 6 without ROUGE when
  ``generate_text`` is false, its ``components`` say which), ``extraction_strength``,
  ``exact_memorization``, ``mia_loss/zlib/min_k/min_k_plus_plus`` (forget vs holdout AUC) and
  ``privleak`` (from mia_min_k and the retain logs' AUC, 0.5 without).
* ``leak_paraphrase``, ``leak_icr``, ``leak_worst``, ``leak_retain`` (:mod:`.leak`; with
  ``generate_text``, on the first ``leak_rows`` forget rows that have target words).

Quirks reproduced: EOS is an answer token for probabilities and LOSS/ZLib; ES, EM, Min-K and
Min-K++ drop the last answer token (the eos prediction), as the reference does; a forget row with no
answer token left scores ES 0 and counts in its mean; Min-K++'s σ_t is clamped at 1e-3. Where the
metrics intentionally differ from the reference harnesses: docs/benchmarks.md.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ...data.formatting import Formatter, stop_token_ids
from ...data.labels import IGNORE_INDEX, UNIQUE
from ...eval import leak, metrics
from ...eval.logs import RetainReference, by_index, entry
from ...eval.scoring import RowTokens, generate, row_tokens
from ...model.distributed import SINGLE, DistContext

UTILITY_KEYS = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
                "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
                "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")
MIA_KEYS = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus")


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_entries(generations: list[str], references: list[str], inputs: list[str]) -> list[dict]:
    out = []
    for gen, ref, inp in zip(generations, references, inputs, strict=True):
        s = _scorer().score(ref, gen)
        out.append({"rouge1_recall": s["rouge1"].recall, "rougeL_f1": s["rougeL"].fmeasure,
                    "rougeL_recall": s["rougeL"].recall, "input": inp, "ground_truth": ref, "generation": gen})
    return out


class TofuScorer:
    """Shared plumbing: encoding with one :class:`Formatter`, batched NLL and generation, sharded over
    the ranks of a distributed ``ctx`` (every rank gets every row's values)."""

    def __init__(self, model, tokenizer, fmt: Formatter, batch_size: int = 32, max_new_tokens: int = 200,
                 ctx: DistContext = SINGLE):
        self.model, self.tokenizer, self.fmt = model, tokenizer, fmt
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.ctx = ctx

    def encode(self, pairs: list[tuple[str, str]]) -> list[dict]:
        return [self.fmt.qa(q, a) for q, a in pairs]

    def tokens(self, pairs, **kw) -> RowTokens:
        return row_tokens(self.model, self.encode(pairs), self.tokenizer.pad_token_id, self.batch_size, **kw,
                          ctx=self.ctx)

    def mean_nll(self, rows: list[dict], key: str) -> np.ndarray:
        """[n] for a string field, [n, k] for a list field (k alternatives per row)."""
        if isinstance(rows[0][key], list):
            k = len(rows[0][key])
            if any(len(r[key]) != k for r in rows):
                raise ValueError(f"rows have different numbers of '{key}' alternatives")
            flat = [(r["question"], a) for r in rows for a in r[key]]
            return self.tokens(flat).mean_nll().reshape(len(rows), k)
        return self.tokens([(r["question"], r[key]) for r in rows]).mean_nll()

    def generations(self, rows: list[dict]) -> tuple[list[str], list[str]]:
        return self.probe_generations([(r["question"], ()) for r in rows])

    def probe_generations(self, probes: list[leak.Probe]) -> tuple[list[str], list[str]]:
        """Greedy answers to (question, context) probes (context: earlier QA turns) and their prompts; after
        context in the plain template an answer is cut where it starts another question."""
        prompts = [self.fmt.prompt_ids(q, context=c) for q, c in probes]
        gens = generate(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size,
                        stop_token_ids(self.tokenizer, self.model), ctx=self.ctx)
        if any(c for _, c in probes):
            gens = [leak.cut_continuation(g) for g in gens]
        return gens, [self.fmt.prompt_text(q, c) for q, c in probes]


def prob_entry(mean_nll: np.ndarray) -> dict:
    probs = metrics.mean_nll_to_prob(mean_nll)
    rows = [{"prob": p.tolist(), "avg_loss": a.tolist()} for p, a in zip(probs, mean_nll)]
    return entry(np.nanmean(probs), by_index(rows))


def truth_ratio_entry(correct_nll, wrong_nll, aggregation: str) -> tuple[dict, np.ndarray]:
    r = metrics.truth_ratio(correct_nll, wrong_nll)
    agg = metrics.truth_ratio_forget(r) if aggregation == "closer_to_1_better" else metrics.truth_ratio_true_better(r)
    return entry(agg, by_index([{"score": float(v)} for v in r])), r


def score_entry(scores) -> dict:
    scores = np.asarray(scores, dtype=np.float64)
    return entry(np.nanmean(scores) if scores.size else None, by_index([{"score": float(s)} for s in scores]))


def mia_scores(tokens: RowTokens, texts: list[str], k: float) -> dict[str, np.ndarray]:
    """Loss-like MIA scores per row (higher = more likely a non-member)."""
    mean_nll = tokens.mean_nll()
    # Min-K / Min-K++ use every answer token but the last (the reference drops the eos prediction).
    lp = [-n[:-1] for n in tokens.nll]
    out = {"mia_loss": metrics.mia_loss(mean_nll), "mia_zlib": metrics.mia_zlib(mean_nll, texts),
           "mia_min_k": metrics.mia_min_k(lp, k)}
    if tokens.mu is not None:
        # μ_t, σ_t from scoring.logprob_moments (σ_t ≥ 1e-3, open-unlearning's variance clamp)
        out["mia_min_k_plus_plus"] = metrics.mia_min_k_plus_plus(
            lp, [m[:-1] for m in tokens.mu], [s[:-1] for s in tokens.sigma], k)
    return out


def mia_entry(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> dict:
    auc = metrics.mia_auc(forget_scores, holdout_scores)
    return entry(auc, auc=auc, forget=score_entry(forget_scores), holdout=score_entry(holdout_scores))


def label_text(tokenizer, labels: np.ndarray) -> str:
    return tokenizer.decode([int(t) for t in labels], skip_special_tokens=True)


def leak_logs(s: TofuScorer, forget: list[dict], retain: list[dict], forget_gens: list[str],
              retain_gens: list[str], judge=None) -> dict:
    """``leak_*`` entries (:mod:`.leak`): in-context examples from ``retain``, whose rows without
    ``target_words`` are judged on their answers' key phrases for ``leak_retain``; ``leak_worst`` names
    its judge (a model judge's ``name``, else ``target_words``). The judge runs over ``s.ctx``."""
    values, records = leak.evaluate_leak(lambda probes: s.probe_generations(probes)[0], forget, retain,
                                         original=forget_gens, retain_rows=retain, retain_answers=retain_gens,
                                         judge=judge, ctx=s.ctx)
    by_row = {str(r["index"]): r for r in records}
    out = {key: entry(values.get(key)) for key in ("leak_paraphrase", "leak_icr", "leak_retain")}
    out["leak_worst"] = entry(values.get("leak_worst"), by_row, judge=getattr(judge, "name", "target_words"))
    return out


def evaluate_tofu(model, tokenizer, fmt: Formatter, sets: dict[str, list[dict]], batch_size: int = 32,
                  max_new_tokens: int = 200, retain_ref: RetainReference | None = None, mia_k: float = 0.4,
                  generate_text: bool = True, leak_rows: int | None = None, leak_judge=None,
                  ctx: DistContext = SINGLE) -> dict:
    """All TOFU metrics of one model: a dict in the TOFU_EVAL.json layout. With ``generate_text`` and
    target words on the forget rows, the leak metrics on the first ``leak_rows`` of them (0: all; None: none),
    judged by ``leak_judge`` (None: target-word match; :mod:`.judge`). ``ctx``: the run's distributed
    context, over whose ranks every forward and generation is sharded (every rank gets the whole logs)."""
    model.eval()
    s = TofuScorer(model, tokenizer, fmt, batch_size, max_new_tokens, ctx)
    logs: dict = {}
    forget = sets["forget"]

    # forget set: answer tokens once (NLL, argmax, moments) for Prob, ES, EM and MIA
    ft = s.tokens([(r["question"], r["answer"]) for r in forget], argmax=True, moments=True)
    logs["forget_Q_A_Prob"] = prob_entry(ft.mean_nll())
    para = s.mean_nll(forget, "paraphrased_answer")
    pert = s.mean_nll(forget, "perturbed_answer")
    logs["forget_Q_A_PARA_Prob"] = prob_entry(para)
    logs["forget_Q_A_PERT_Prob"] = prob_entry(pert)
    logs["forget_truth_ratio"], r_forget = truth_ratio_entry(para, pert, "closer_to_1_better")
    logs["extraction_strength"] = score_entry(metrics.extraction_strength(
        [a[:-1] for a in ft.argmax], [y[:-1] for y in ft.labels]))
    logs["exact_memorization"] = score_entry(metrics.exact_memorization(
        [a[:-1] for a in ft.argmax], [y[:-1] for y in ft.labels]))
    ref_r = retain_ref.forget_truth_ratio if retain_ref is not None else None
    fq = metrics.forget_quality(r_forget, ref_r) if ref_r is not None and ref_r.size else None
    logs["forget_quality"] = entry(fq)

    if sets.get("holdout"):
        holdout = sets["holdout"]
        ht = s.tokens([(r["question"], r["answer"]) for r in holdout], moments=True)
        f_mia = mia_scores(ft, [label_text(tokenizer, y) for y in ft.labels], mia_k)
        h_mia = mia_scores(ht, [label_text(tokenizer, y) for y in ht.labels], mia_k)
        for key in MIA_KEYS:
            logs[key] = mia_entry(f_mia[key], h_mia[key])
        ref_auc = retain_ref.mia_min_k_auc if retain_ref is not None and retain_ref.mia_min_k_auc is not None else 0.5
        logs["privleak"] = entry(metrics.privleak(logs["mia_min_k"]["agg_value"], ref_auc), ref_value=ref_auc)

    # retain set
    retain = sets["retain"]
    logs["retain_Q_A_Prob"] = prob_entry(s.mean_nll(retain, "answer"))
    r_para, r_pert = s.mean_nll(retain, "paraphrased_answer"), s.mean_nll(retain, "perturbed_answer")
    logs["retain_Q_A_PARA_Prob"] = prob_entry(r_para)
    logs["retain_Q_A_PERT_Prob"] = prob_entry(r_pert)
    logs["retain_Truth_Ratio"], _ = truth_ratio_entry(r_para, r_pert, "true_better")

    # real authors / world facts: correct = answer, wrong = perturbed options
    for short, name in (("ra", "real_authors"), ("wf", "world_facts")):
        rows = sets[name]
        ans, opts = s.mean_nll(rows, "answer"), s.mean_nll(rows, "perturbed_answer")
        logs[f"{short}_Q_A_Prob"] = prob_entry(ans)
        logs[f"{short}_Q_A_PERT_Prob"] = prob_entry(opts)
        norm = metrics.normalised_prob(ans, opts)
        logs[f"{short}_Q_A_Prob_normalised"] = entry(norm.mean(), by_index([{"prob": float(p)} for p in norm]))
        logs[f"{short}_Truth_Ratio"], _ = truth_ratio_entry(ans, opts, "true_better")

    if generate_text:
        gens = {}
        for prefix, name in (("forget", "forget"), ("retain", "retain"), ("ra", "real_authors"),
                             ("wf", "world_facts")):
            rows = sets[name]
            gens[name], inputs = s.generations(rows)
            vals = rouge_entries(gens[name], [r["answer"] for r in rows], inputs)
            logs[f"{prefix}_Q_A_ROUGE"] = entry(np.mean([v["rougeL_recall"] for v in vals]), by_index(vals))
        if leak_rows is not None and any(r.get("target_words") for r in forget):
            logs.update(leak_logs(s, forget[:leak_rows or len(forget)], retain, gens["forget"], gens["retain"],
                                  leak_judge))
    # without generations (a fast sweep) model utility is the harmonic mean of the 6 other values
    used = [k for k in UTILITY_KEYS if k in logs]
    logs["model_utility"] = entry(metrics.model_utility([logs[k]["agg_value"] for k in used]), components=used)

    if any("target_words" in r for r in forget):
        enc = [fmt.qa(r["question"], r["answer"], r.get("target_words") or []) for r in forget]
        kinds = [np.array(e["span_kind"])[np.array(e["labels"]) != IGNORE_INDEX] for e in enc]
        # the model's own per-token NLL as a token ranker (methods report their weights through the driver)
        labels = [(k == UNIQUE).astype(int) for k in kinds]
        logs["span_auroc_nll"] = entry(metrics.span_auroc(ft.nll, labels))
        logs["span_ap_nll"] = entry(metrics.span_average_precision(ft.nll, labels))
    return logs
