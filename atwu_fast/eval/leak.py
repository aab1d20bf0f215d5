"""The leak metric: worst-case forgetting over question paraphrases and in-context retain examples,
judged deterministically (docs/benchmarks.md, "Leak under paraphrase and in-context retain examples").

Protocol. For every evaluated forget row the model answers greedily four *probes*:

* ``original``: the row's question;
* ``paraphrase``: its ``paraphrased_question`` (skipped for a row without one);
* ``original_icr`` / ``paraphrase_icr``: the same two questions preceded, in the prompt, by
  :data:`ICR_EXAMPLES` retain question–answer pairs ("in-context retain examples"), written in the
  benchmark's own prompt format (earlier turns of the chat template, or ``Question: …\\nAnswer: …``
  blocks). The examples are drawn from the retain set with a generator seeded by the row's index
  (:func:`icr_examples`), never the row's own question and never a pair that contains one of the row's
  target words (the answer must not be copyable from the context).

A generation *leaks* when it contains one of the row's target words (:func:`contains_target`: case
-insensitive substring match after collapsing whitespace). Target words (:func:`row_targets`): the
row's ``target_words`` annotation (TOFU), else the fact values of its ``spans`` (the embedded
benchmark; the author's name, which the question already contains, is not a fact value), else the key
phrases of its answer that its question does not contain (:func:`key_phrases`; TOFU's retain rows,
which carry no annotation). A row without target words is not judged.

Metrics (:func:`leak_metrics`), fractions of the judged rows:

* ``leak_paraphrase`` (J_P): leaks on the original or the paraphrased question, no context;
* ``leak_icr`` (J_ICR): leaks on the original question with the in-context retain examples;
* ``leak_worst`` (J_W): leaks under any probe — the worst case;
* ``leak_retain`` (J_avg): on retain rows, the fraction whose answer to the original question DOES
  contain its own target words (knowledge kept; higher is better).

The paper judged leaks with a commercial LLM, which cannot be re-run to the same numbers; substring
matching of annotated target words is cruder but exactly reproducible.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import numpy as np

from ..model.distributed import SINGLE, DistContext

ICR_EXAMPLES = 3  # in-context retain QA pairs per ICR probe
PROBES = ("original", "paraphrase", "original_icr", "paraphrase_icr")
Context = tuple[tuple[str, str], ...]  # (question, answer) pairs placed before the question
Probe = tuple[str, Context]  # (question, context)
JudgeItem = tuple[str, Sequence[str], str]  # (question, target words, answer)
# one verdict per item (the answer states its targets); a model judge shards the items over the context's ranks
Judge = Callable[[list[JudgeItem], DistContext], list[bool]]

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case with every whitespace run collapsed to one space, stripped."""
    return _SPACE.sub(" ", str(text)).strip().lower()


def contains_target(text: str, targets: Sequence[str]) -> bool:
    """True when ``text`` contains one of ``targets`` (case-insensitive substring after whitespace
    normalisation of both); empty targets never match."""
    hay = normalise(text)
    return any(t and t in hay for t in (normalise(w) for w in targets))


_PHRASE = re.compile(r"\d[\d,.]*\d|\d|[A-Z][\w'’-]*(?:\s+(?:of|the|de|la|von|van|and|&)?\s*[A-Z][\w'’-]*)*")
_FUNCTION_WORDS = {"the", "a", "an", "in", "on", "his", "her", "their", "its", "this", "that", "yes", "no", "he",
                   "she", "they", "it", "i", "as", "at", "by", "for", "from", "with", "while", "although"}


def key_phrases(question: str, answer: str) -> list[str]:
    """The answer's capitalised phrases and numbers that the question does not contain (case-insensitive):
    the target words of a row that carries no annotation. A leading function word ("The", "His") is
    dropped from a phrase."""
    q = normalise(question)
    out: list[str] = []
    for m in _PHRASE.finditer(answer):
        words = m.group(0).split()
        while words and words[0].lower() in _FUNCTION_WORDS:
            words = words[1:]
        phrase = " ".join(words).strip(".,;:'’")
        if phrase and normalise(phrase) not in q and phrase not in out:
            out.append(phrase)
    return out


def cut_continuation(text: str) -> str:
    """A generated answer up to where it starts another plain-template question (a model answering
    after QA blocks may go on writing them)."""
    return text.split("\nQuestion:")[0].strip()


def row_targets(row: dict) -> list[str]:
    """A row's target words: ``target_words``, else the fact values of ``spans`` (not the author's name),
    else :func:`key_phrases` of its question and answer."""
    if row.get("target_words"):
        return [str(w) for w in row["target_words"] if str(w).strip()]
    if row.get("spans"):
        return list(dict.fromkeys(s["text"] for s in row["spans"] if s.get("fact") != "name" and s.get("text")))
    if "spans" in row:  # annotated, with no fact value (the embedded general-knowledge rows)
        return []
    return key_phrases(row.get("question", ""), row.get("answer", ""))


def icr_examples(index: int, row: dict, retain: Sequence[dict], k: int = ICR_EXAMPLES, seed: int = 0) -> Context:
    """``k`` retain (question, answer) pairs for forget row ``index``: a seeded draw (seed, index) from
    ``retain``, skipping the row's own question and any pair containing one of its target words."""
    targets = row_targets(row)
    order = list(range(len(retain)))
    random.Random(seed * 1_000_003 + index).shuffle(order)
    picked: list[tuple[str, str]] = []
    for i in order:
        q, a = retain[i]["question"], retain[i]["answer"]
        if q == row["question"] or contains_target(q + " " + a, targets):
            continue
        picked.append((q, a))
        if len(picked) == k:
            break
    return tuple(picked)


def row_probes(index: int, row: dict, retain: Sequence[dict], k: int = ICR_EXAMPLES, seed: int = 0) -> dict[str, Probe]:
    """The probes of one forget row: probe name → (question, context)."""
    context = icr_examples(index, row, retain, k, seed)
    out: dict[str, Probe] = {"original": (row["question"], ())}
    para = row.get("paraphrased_question")
    if para:
        out["paraphrase"] = (para, ())
    out["original_icr"] = (row["question"], context)
    if para:
        out["paraphrase_icr"] = (para, context)
    return out


def leak_metrics(leaks: Sequence[dict[str, bool]], kept: Sequence[bool] | None = None) -> dict[str, float]:
    """J_P, J_ICR, J_W over per-row probe judgements (probe name → leaked; a missing probe did not
    leak) and J_avg over the retain rows' judgements ``kept``; absent when there are no rows."""
    out: dict[str, float] = {}
    if leaks:
        out["leak_paraphrase"] = float(np.mean([r.get("original", False) or r.get("paraphrase", False)
                                                for r in leaks]))
        out["leak_icr"] = float(np.mean([r.get("original_icr", False) for r in leaks]))
        out["leak_worst"] = float(np.mean([any(r.values()) for r in leaks]))
    if kept:
        out["leak_retain"] = float(np.mean(list(kept)))
    return out


def evaluate_leak(generate: Callable[[list[Probe]], list[str]], forget: Sequence[dict], retain: Sequence[dict],
                  original: Sequence[str] | None = None, retain_answers: Sequence[str] | None = None,
                  retain_rows: Sequence[dict] | None = None, k: int = ICR_EXAMPLES, seed: int = 0,
                  judge: Judge | None = None, ctx: DistContext = SINGLE) -> tuple[dict[str, float], list[dict]]:
    """The leak metrics of one model. ``generate(probes)`` answers (question, context) probes greedily
    (the suite's prompt format and generation); ``forget`` are the judged forget rows, ``retain`` the
    pool of in-context examples. ``original``: answers already generated to the forget rows' questions
    (reused, not generated again); ``retain_rows`` / ``retain_answers``: the retain rows and their
    answers for J_avg (omitted: no J_avg). ``judge`` decides, for all (question, target words, answer)
    items at once, whether each answer states its targets (default: :func:`contains_target`; a model
    judge: :mod:`.judge`); it is called as ``judge(items, ctx)``, ``ctx`` being the evaluation's
    distributed context (a model judge shards its forwards over its ranks). Returns the metrics and one
    record per judged forget row (its probes' generations and judgements)."""
    judged = [(i, r, row_targets(r)) for i, r in enumerate(forget)]
    judged = [(i, r, t) for i, r, t in judged if t]
    probes = [(i, name, probe) for i, r, _ in judged for name, probe in row_probes(i, r, retain, k, seed).items()
              if not (name == "original" and original is not None)]
    answers = dict(zip([(i, name) for i, name, _ in probes], generate([p for _, _, p in probes]), strict=True))
    if original is not None:
        answers.update({(i, "original"): original[i] for i, _, _ in judged})
    keyed = [((i, n), (row["question"], targets, answers[(i, n)]))
             for i, row, targets in judged for n in PROBES if (i, n) in answers]
    with_retain = retain_rows is not None and retain_answers is not None
    kept_items = [(r["question"], t, a) for r, a in zip(retain_rows, retain_answers, strict=True)
                  if (t := row_targets(r))] if with_retain else []
    items = [item for _, item in keyed] + kept_items
    verdicts = (judge or substring_judge)(items, ctx) if items else []
    if len(verdicts) != len(items):
        raise ValueError(f"the leak judge returned {len(verdicts)} verdicts for {len(items)} answers")
    leaked = dict(zip([key for key, _ in keyed], verdicts))
    records, leaks = [], []
    for i, row, targets in judged:
        names = [n for n in PROBES if (i, n) in answers]
        flags = {n: bool(leaked[(i, n)]) for n in names}
        leaks.append(flags)
        records.append({"index": i, "question": row["question"], "target_words": targets,
                        "generations": {n: answers[(i, n)] for n in names}, "leaked": flags,
                        "leak_worst": any(flags.values())})
    kept = [bool(v) for v in verdicts[len(keyed):]] if with_retain else None
    return leak_metrics(leaks, kept), records


def substring_judge(items: list[JudgeItem], ctx: DistContext = SINGLE) -> list[bool]:
    """The default judge: each (question, target words, answer) item's answer contains one of its target
    words (:func:`contains_target`; ``ctx`` unused: matching is cheap and the same on every rank)."""
    return [contains_target(answer, targets) for _, targets, answer in items]
