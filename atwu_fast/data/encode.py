"""Question/answer -> token ids, answer-only labels and per-token span kinds.

Layout of an encoded pair: ``[bos] + tok(PROMPT) + tok(ANSWER_PREFIX + answer) + [eos]``. Prompt and
answer are tokenised separately, so the prompt/answer boundary is a token boundary and the same
prompt ids are produced for generation (:func:`encode_prompt`).
"""

from __future__ import annotations

from collections.abc import Iterable

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
ANSWER_PREFIX = " "  # answers follow "Answer:" after one space; the only place this is decided
IGNORE_INDEX = -100

# span_kind values
NOT_ANSWER, OUTSIDE, POOLED, UNIQUE = -1, 0, 1, 2
_KIND_CODE = {"pooled": POOLED, "unique": UNIQUE}


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


def format_answer(answer: str) -> str:
    return ANSWER_PREFIX + answer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, question: str) -> list[int]:
    """``[bos] + prompt tokens``: the generation prefix (the answer starts with ANSWER_PREFIX)."""
    return [tokenizer.bos_token_id] + _ids(tokenizer, format_prompt(question))


def encode_qa(tokenizer, question: str, answer: str, max_length: int, spans: list[dict] | None = None) -> dict:
    """Encode one QA pair.

    Returns ``input_ids``; ``labels`` (-100 on bos and prompt, the id on answer tokens and eos);
    ``span_kind`` (-1 off the answer, else 0 outside any span, 1 overlapping a pooled span, 2
    overlapping a unique span, unique winning; eos is 0). Spans are character offsets into
    ``answer``. Too long: the tail is cut (eos first), keeping at least one answer label; a prompt
    that leaves no room for one raises ``ValueError``.
    """
    prompt_ids = encode_prompt(tokenizer, question)
    if len(prompt_ids) + 1 > max_length:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room for an answer within "
                         f"max_length={max_length}: question {question!r}")
    enc = tokenizer(format_answer(answer), add_special_tokens=False, return_offsets_mapping=True)
    answer_ids = enc["input_ids"]
    shift = len(ANSWER_PREFIX)
    kinds = [OUTSIDE] * len(answer_ids)
    for span in spans or ():
        lo, hi = span["start"] + shift, span["end"] + shift
        code = _KIND_CODE[span["kind"]]
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if a < hi and b > lo and code > kinds[t]:
                kinds[t] = code
    input_ids = prompt_ids + answer_ids + [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
    span_kind = [NOT_ANSWER] * len(prompt_ids) + kinds + [OUTSIDE]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length], "span_kind": span_kind[:max_length]}


def encode_row(tokenizer, row: dict, max_length: int, answer_key: str = "answer") -> dict:
    """:func:`encode_qa` of a data row (spans only apply to the ``answer`` field)."""
    spans = row.get("spans") if answer_key == "answer" else None
    return encode_qa(tokenizer, row["question"], row[answer_key], max_length, spans)


def decode_answer(tokenizer, ids: Iterable[int]) -> str:
    """Generated answer ids -> text: cut at the first eos, drop specials and the answer prefix."""
    out = []
    for i in ids:
        i = int(i)
        if i == tokenizer.eos_token_id:
            break
        out.append(i)
    text = tokenizer.decode(out, skip_special_tokens=True)
    return text[len(ANSWER_PREFIX):] if text.startswith(ANSWER_PREFIX) else text


def tokenizer_corpus(splits: dict[str, list[dict]], include: Iterable[str] = ("forget", "retain", "general"),
                     ) -> list[str]:
    """Texts to train the tokenizer on: the prompts and answers the models are fine-tuned on.

    Holdout rows and paraphrased/perturbed answers are left out by default, so text the models
    never see does not get vocabulary entries of its own (it is split into seen pieces instead).
    """
    texts = []
    for split in include:
        for row in splits.get(split, ()):
            texts.append(format_prompt(row["question"]))
            texts.append(format_answer(row["answer"]))
    return texts
