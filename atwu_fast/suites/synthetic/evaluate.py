"""Evaluation of a model on the embedded fictitious-authors benchmark (docs/benchmarks.md definitions).

Per split, teacher-forced mean answer NLLs give probabilities and truth ratios; greedy generations
give ROUGE-L recall, answer accuracy (every fact value of the row reproduced) and the leak metrics
(:mod:`atwu_fast.eval.leak`: fact values in answers to paraphrased questions and with in-context
retain examples). Forget quality is
the KS-test p-value between this model's and the retain model's forget truth ratios; model utility
is the harmonic mean of the retain and general-knowledge values (this set has no separate
real-authors/world-facts splits, so 6 values instead of TOFU's 9).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config import check, option
from ...data.formatting import decode_answer, encode_prompt, encode_qa
from ...eval import leak as leak_metric
from ...eval import metrics
from ...methods.base import sequence_lengths, sequence_sum
from ...model.distributed import SINGLE, DistContext
from ...model.generation import greedy_generate
from ...model.tokens import map_answer_tokens, token_nll
from ...report import progress


@dataclass
class EvalConfig:
    """Evaluation of the embedded benchmark (and how often span alignment is measured during training)."""

    eval_every: int = option("evaluate span alignment every N steps (0: only at the end)", 10)
    batch_size: int = option("rows per evaluation forward / generation batch", 64)
    max_new_tokens: int = option("greedy generation length", 48)
    generate: bool = option("greedy generations for ROUGE-L and accuracy", True)
    retain_authors: int = option("retain authors evaluated (TOFU's retain_perturbed holds 20; 0: all)", 20)
    leak: bool = option("with generate: the leak metrics (leak_worst J_W, leak_paraphrase, leak_icr, leak_retain "
                        "J_avg; docs/benchmarks.md)", True)
    leak_rows: int = option("forget rows probed for the leak metrics (0: all)", 0)
    leak_judge: str = option("a local causal LM (directory or hub id) that judges leaks instead of target-word matching: it answers whether each answer states the facts, in any wording (default: exact target-word match)", "")

    def validate(self) -> None:
        check(self.eval_every >= 0, "eval.eval_every must be >= 0")
        check(self.leak_rows >= 0, "eval.leak_rows must be >= 0")
        check(self.retain_authors >= 0, "eval.retain_authors must be >= 0")
        check(self.batch_size >= 1 and self.max_new_tokens >= 1, "eval sizes must be >= 1")


def mean_answer_nll(model, tokenizer, pairs: list[tuple[str, str]], max_length: int, batch_size: int,
                    ctx: DistContext = SINGLE) -> np.ndarray:
    """Mean token NLL (EOS included) of each answer given its question: L̄(a|q). Every function here
    shards its rows over the ranks of a distributed ``ctx`` (each rank gets every row's value)."""
    def batch_nll(m, tokens, kinds, part: list[dict]) -> list[float]:
        n = len(part)
        mean = sequence_sum(token_nll(m, tokens), tokens.seq, n) / sequence_lengths(tokens.seq, n).clamp_min(1)
        return mean.tolist()

    rows = [encode_qa(tokenizer, q, a, max_length) for q, a in pairs]
    return np.asarray(map_answer_tokens(model, rows, tokenizer.pad_token_id, batch_size, batch_nll,
                                        lambda n, b: progress.batch_starts(n, b, "eval NLL"), ctx=ctx),
                      dtype=np.float64)


def truth_ratios(model, tokenizer, rows: list[dict], correct_key: str, max_length: int, batch_size: int,
                 ctx: DistContext = SINGLE) -> np.ndarray:
    """R_i = exp(−mean_j L̄(perturbed_ij)) / exp(−L̄(correct_i)) for every row."""
    correct = mean_answer_nll(model, tokenizer, [(r["question"], r[correct_key]) for r in rows], max_length,
                              batch_size, ctx)
    n_pert = len(rows[0]["perturbed_answer"])
    flat = [(r["question"], a) for r in rows for a in r["perturbed_answer"]]
    pert = mean_answer_nll(model, tokenizer, flat, max_length, batch_size, ctx).reshape(len(rows), n_pert)
    return metrics.truth_ratio(correct, pert)


def forget_extraction_strength(model, tokenizer, rows: list[dict], max_length: int, batch_size: int,
                               ctx: DistContext = SINGLE) -> float:
    """Mean extraction strength 1 − k*/N of the answers (teacher-forced argmax; the eos prediction
    dropped, as for TOFU)."""
    from ...eval.scoring import row_tokens

    encoded = [encode_qa(tokenizer, r["question"], r["answer"], max_length) for r in rows]
    tokens = row_tokens(model, encoded, tokenizer.pad_token_id, batch_size, argmax=True, ctx=ctx)
    return float(np.mean(metrics.extraction_strength([a[:-1] for a in tokens.argmax], [y[:-1] for y in tokens.labels])))


def generations(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int,
                ctx: DistContext = SINGLE) -> list[str]:
    return probe_generations(model, tokenizer, [(r["question"], ()) for r in rows], max_new_tokens, batch_size,
                             ctx=ctx)


def probe_generations(model, tokenizer, probes: list[leak_metric.Probe], max_new_tokens: int, batch_size: int,
                      label: str = "generate", ctx: DistContext = SINGLE) -> list[str]:
    """Greedy answers to (question, context) probes in the plain template (context: earlier QA blocks;
    an answer after context is cut where it starts another question)."""
    def decode(ids: list[int]) -> str:
        return decode_answer(tokenizer, ids)

    def decode_cut(ids: list[int]) -> str:
        return leak_metric.cut_continuation(decode_answer(tokenizer, ids))

    return greedy_generate(model, tokenizer, [encode_prompt(tokenizer, q, context=c) for q, c in probes],
                           max_new_tokens, batch_size, [tokenizer.eos_token_id],
                           decode_cut if any(c for _, c in probes) else decode,
                           lambda n, b: progress.batch_starts(n, b, label), ctx=ctx)


def _generation_metrics(prefix: str, gens: list[str], rows: list[dict]) -> dict:
    values = [[s["text"] for s in r.get("spans", []) if s.get("fact") != "name"] for r in rows]
    return {
        f"{prefix}_rouge": float(metrics.rouge_l_recall(gens, [r["answer"] for r in rows]).mean()),
        f"{prefix}_acc": metrics.exact_answer_accuracy(gens, values, [r["answer"] for r in rows]),
    }


@dataclass
class ModelEvaluation:
    metrics: dict
    forget_truth_ratios: np.ndarray
    samples: list[dict]


def evaluation_splits(splits: dict[str, list[dict]], retain_authors: int) -> dict[str, list[dict]]:
    """The splits as evaluated: retain restricted to its first ``retain_authors`` authors (0: all),
    like TOFU's 20-author retain_perturbed set."""
    if not retain_authors:
        return splits
    kept: list[str] = []
    for row in splits["retain"]:
        if row["author"] not in kept:
            kept.append(row["author"])
    keep = set(kept[:retain_authors])
    return {**splits, "retain": [r for r in splits["retain"] if r["author"] in keep]}


def evaluate_model(model, tokenizer, splits: dict[str, list[dict]], max_length: int, batch_size: int,
                   max_new_tokens: int, generate: bool = True,
                   retain_forget_truth_ratios: np.ndarray | None = None, leak_rows: int | None = 0,
                   leak_judge=None, ctx: DistContext = SINGLE) -> ModelEvaluation:
    """All metrics of one model; pass :func:`evaluation_splits` to bound the retain cost. With ``generate``
    the leak metrics on the first ``leak_rows`` forget rows (0: all; None: no leak metrics), judged by
    ``leak_judge`` (None: target-word match; :mod:`atwu_fast.eval.judge`). ``ctx``: the run's distributed
    context, over whose ranks every forward and generation is sharded (every rank gets all metrics)."""
    model.eval()
    kw = {"max_length": max_length, "batch_size": batch_size, "ctx": ctx}
    forget, retain, general = splits["forget"], splits["retain"], splits["general"]
    r_forget = truth_ratios(model, tokenizer, forget, "paraphrased_answer", **kw)
    r_retain = truth_ratios(model, tokenizer, retain, "paraphrased_answer", **kw)
    r_general = truth_ratios(model, tokenizer, general, "answer", **kw)
    nll = {name: mean_answer_nll(model, tokenizer, [(r["question"], r["answer"]) for r in splits[name]], **kw)
           for name in ("forget", "retain", "general", "holdout") if splits.get(name)}
    n_pert = len(general[0]["perturbed_answer"])
    general_pert = mean_answer_nll(model, tokenizer, [(r["question"], a) for r in general for a in r["perturbed_answer"]],
                                   **kw).reshape(len(general), n_pert)
    out = {
        "forget_prob": float(metrics.mean_nll_to_prob(nll["forget"]).mean()),
        "forget_truth_ratio": metrics.truth_ratio_forget(r_forget),
        "retain_prob": float(metrics.mean_nll_to_prob(nll["retain"]).mean()),
        "retain_truth_ratio": metrics.truth_ratio_true_better(r_retain),
        "general_prob": float(metrics.normalised_prob(nll["general"], general_pert).mean()),
        "general_truth_ratio": metrics.truth_ratio_true_better(r_general),
    }
    if "holdout" in nll:
        out["mia_loss_auc"] = metrics.mia_auc(metrics.mia_loss(nll["forget"]), metrics.mia_loss(nll["holdout"]))
    out["extraction_strength"] = forget_extraction_strength(model, tokenizer, forget, **kw)
    samples = []
    if generate:
        gens = {name: generations(model, tokenizer, splits[name], max_new_tokens, batch_size, ctx)
                for name in ("forget", "retain", "general")}
        for name in gens:
            out.update(_generation_metrics(name, gens[name], splits[name]))
        samples = [{"question": r["question"], "answer": r["answer"], "generation": g}
                   for r, g in zip(forget[:5], gens["forget"][:5])]
        if leak_rows is not None:
            n = leak_rows or len(forget)
            leaks, _ = leak_metric.evaluate_leak(
                lambda probes: probe_generations(model, tokenizer, probes, max_new_tokens, batch_size, "leak probes",
                                                 ctx),
                forget[:n], retain, original=gens["forget"][:n], retain_rows=retain, retain_answers=gens["retain"],
                judge=leak_judge, ctx=ctx)
            out.update(leaks)
        utility = [out["retain_prob"], out["retain_rouge"], out["retain_truth_ratio"],
                   out["general_prob"], out["general_rouge"], out["general_truth_ratio"]]
    else:
        utility = [out["retain_prob"], out["retain_truth_ratio"], out["general_prob"], out["general_truth_ratio"]]
    out["model_utility"] = metrics.model_utility(utility)
    if retain_forget_truth_ratios is not None:
        out["forget_quality"] = metrics.forget_quality(r_forget, retain_forget_truth_ratios)
    return ModelEvaluation(out, r_forget, samples)
