"""Prompt/answer formatting: the plain ``Question: …\nAnswer: …`` template or a tokenizer's chat template.

An encoded QA row is ``prompt ids + answer ids (+ end-of-turn / eos)``; labels are −100 on the
prompt and the answer tokens (end-of-turn and eos included) are labelled. Prompt and answer are
tokenised separately, so the boundary is a token boundary and :meth:`Formatter.prompt_ids` gives
exactly the generation prefix. Padding is done later by :func:`atwu_fast.data.collate.collate` from
row lengths: a genuine eos / end-of-turn token is never mistaken for padding (unlike pad = eos masking).

Spans mark answer tokens (``span_kind``, codes in :mod:`atwu_fast.data.labels`) through the
tokenizer's offset mapping: character ``spans`` of the answer with a kind (the embedded benchmark's
fact values), or "target words" (strings; every occurrence in the answer is UNIQUE). Prompt tokens
are NOT_ANSWER, other answer tokens OUTSIDE; where spans overlap the larger code wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .labels import IGNORE_INDEX, KIND_CODE, NOT_ANSWER, OUTSIDE, UNIQUE

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
ANSWER_PREFIX = " "  # answers follow "Answer:" after one space; the only place this is decided


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


def format_answer(answer: str) -> str:
    return ANSWER_PREFIX + answer


CONTEXT_SEPARATOR = "\n\n"  # between QA blocks placed before a question in the plain template


def format_context(context: Sequence[tuple[str, str]]) -> str:
    """(question, answer) pairs as plain-template QA blocks, each followed by a blank line."""
    return "".join(format_prompt(q) + format_answer(a) + CONTEXT_SEPARATOR for q, a in context)


def ensure_pad_token(tokenizer) -> bool:
    """Give the tokenizer a pad token distinct from eos; returns True when one was added.

    Prefers unk (never trained on as a target), else adds ``<|pad|>`` (the next id). Masks come from
    lengths, so pad only has to be some id that attention never sees, but the model still needs an
    embedding row for it: a checkpoint's vocabulary often has spare rows, else it grows by one
    (:func:`atwu_fast.model.loading.grow_embeddings_for`).
    """
    pad = tokenizer.pad_token_id
    if pad is not None and pad != tokenizer.eos_token_id:
        return False
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
        return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def word_char_spans(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of every occurrence of each target word/phrase in ``text``.

    Matching is case-sensitive on word boundaries where the word starts/ends with a word
    character; when nothing matches case-sensitively, a case-insensitive match is tried.
    """
    spans = []
    for word in words:
        word = str(word).strip()
        if not word:
            continue
        left = r"(?<!\w)" if re.match(r"\w", word) else ""
        right = r"(?!\w)" if re.search(r"\w$", word) else ""
        pattern = left + re.escape(word) + right
        found = [(m.start(), m.end()) for m in re.finditer(pattern, text)]
        if not found:
            found = [(m.start(), m.end()) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
        spans.extend(found)
    return sorted(spans)


class Formatter:
    """Encodes QA pairs and raw texts for one tokenizer.

    ``chat_template``: "on" (the tokenizer's template, with ``system_prompt`` when non-empty),
    "off" (``Question: {q}\\nAnswer: {a}``), "auto" (on when the tokenizer has a template).
    """

    def __init__(self, tokenizer, chat_template: str = "auto", system_prompt: str = "", max_length: int = 512):
        if chat_template not in ("auto", "on", "off"):
            raise ValueError(f"chat_template must be auto, on or off, got {chat_template!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "on" and not has_template:
            raise ValueError("chat_template=on but the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.use_chat = has_template if chat_template == "auto" else chat_template == "on"
        self.system_prompt = system_prompt
        self.max_length = max_length

    # ------------------------------------------------------------------ helpers
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _messages(self, question: str, context: Sequence[tuple[str, str]] = ()) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for q, a in context:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return msgs + [{"role": "user", "content": question}]

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None else []

    def prompt_text(self, question: str, context: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt as text (special tokens written out for chat templates). ``context``: (question,
        answer) pairs answered before it (earlier turns; in the plain template, QA blocks)."""
        if self.use_chat:
            return self.tokenizer.apply_chat_template(self._messages(question, context), tokenize=False,
                                                      add_generation_prompt=True)
        return format_context(context) + format_prompt(question)

    def prompt_ids(self, question: str, suffix: str = "", context: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Generation prefix of ``question`` (after the ``context`` QA pairs); ``suffix`` is appended after
        the template (RWKU's "Answer:")."""
        text = self.prompt_text(question, context) + suffix
        return self._ids(text) if self.use_chat else self._bos() + self._ids(text)

    def instruction_ids(self, instruction: str, suffix: str = "") -> list[int]:
        """A free-form user turn (chat template when on) followed by ``suffix`` (RWKU probes)."""
        if self.use_chat:
            text = self.tokenizer.apply_chat_template(self._messages(instruction), tokenize=False,
                                                      add_generation_prompt=True)
            return self._ids(text + suffix)
        return self._bos() + self._ids(instruction + suffix)

    def instruction_text(self, instruction: str, suffix: str = "") -> str:
        if self.use_chat:
            return self.tokenizer.apply_chat_template(self._messages(instruction), tokenize=False,
                                                      add_generation_prompt=True) + suffix
        return instruction + suffix

    def _answer_text(self, question: str, answer: str) -> tuple[str, int]:
        """The text after the prompt (answer plus end-of-turn markup) and the answer's offset in it."""
        if not self.use_chat:
            return format_answer(answer), len(ANSWER_PREFIX)
        prompt = self.prompt_text(question)
        full = self.tokenizer.apply_chat_template(
            self._messages(question) + [{"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template's rendering of a conversation does not start with its generation "
                             "prompt; use --benchmark.chat_template off")
        tail = full[len(prompt):].rstrip()
        at = tail.find(answer)
        return tail, max(at, 0)

    # ------------------------------------------------------------------ encoders
    def qa(self, question: str, answer: str, target_words: Sequence[str] | None = None,
           spans: Sequence[dict] | None = None) -> dict:
        """``input_ids``, ``labels`` (−100 on the prompt) and, with target words or character ``spans``
        (``{"start", "end", "kind"}`` into ``answer``), ``span_kind``. Too long: the tail is cut,
        keeping at least one answer label; a prompt that leaves no room for one raises ``ValueError``."""
        prompt_ids = self.prompt_ids(question)
        if len(prompt_ids) + 1 > self.max_length:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room for an answer within "
                             f"max_length={self.max_length}: {question[:60]!r}")
        tail, at = self._answer_text(question, answer)
        enc = self.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
        answer_ids = list(enc["input_ids"])
        eos = self.tokenizer.eos_token_id
        end_ids = set(_end_ids(self.tokenizer))
        if eos is not None and not (answer_ids and answer_ids[-1] in end_ids) and eos not in answer_ids:
            answer_ids.append(eos)
        offsets = list(enc["offset_mapping"]) + [(len(tail), len(tail))] * (len(answer_ids) - len(enc["input_ids"]))
        marked = [(s["start"], s["end"], KIND_CODE[s["kind"]]) for s in spans or ()]
        if target_words:
            marked += [(lo, hi, UNIQUE) for lo, hi in word_char_spans(tail[at:at + len(answer)], target_words)]
        kinds = [OUTSIDE] * len(answer_ids)
        for lo, hi, code in marked:
            lo, hi = lo + at, hi + at
            for t, (a, b) in enumerate(offsets):
                if a < hi and b > lo and code > kinds[t]:
                    kinds[t] = code
        row = {
            "input_ids": (prompt_ids + answer_ids)[:self.max_length],
            "labels": ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:self.max_length],
        }
        if target_words is not None or spans is not None:
            row["span_kind"] = ([NOT_ANSWER] * len(prompt_ids) + kinds)[:self.max_length]
        return row

    def text(self, text: str, target_words: Sequence[str] | None = None, eos: bool = True) -> dict:
        """A raw text for language modelling: ``[bos] + text (+ [eos])``, every token after bos labelled."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = self._bos() + list(enc["input_ids"])
        n_bos = len(ids) - len(enc["input_ids"])
        if eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        labels = [IGNORE_INDEX] * n_bos + ids[n_bos:]
        if not n_bos:  # the first token cannot be predicted
            labels[0] = IGNORE_INDEX
        row = {"input_ids": ids[:self.max_length], "labels": labels[:self.max_length]}
        if target_words is not None:
            kinds = [NOT_ANSWER] * n_bos + [OUTSIDE] * (len(ids) - n_bos)
            for lo, hi in word_char_spans(text, target_words):
                for t, (a, b) in enumerate(enc["offset_mapping"]):
                    if a < hi and b > lo:
                        kinds[n_bos + t] = UNIQUE
            if not n_bos:
                kinds[0] = NOT_ANSWER
            row["span_kind"] = kinds[:self.max_length]
        return row

    def row(self, row: dict, answer_key: str = "answer") -> dict:
        """Encode a data row: QA when it has ``question``, else raw ``text``."""
        words = row.get("target_words")
        if "question" in row:
            return self.qa(row["question"], row[answer_key], words)
        return self.text(row["text"], words)


def _end_ids(tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for tok in ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None:
            ids.append(tid)
    return ids


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """eos, common end-of-turn tokens and the model's generation-config eos ids."""
    ids = _end_ids(tokenizer)
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen is not None:
        ids.extend(gen if isinstance(gen, (list, tuple)) else [gen])
    return list(dict.fromkeys(int(i) for i in ids))


# --------------------------------------------------------------------------- the plain template


def encode_prompt(tokenizer, question: str, context: Sequence[tuple[str, str]] = ()) -> list[int]:
    """``[bos] + prompt tokens`` of the plain template: the generation prefix (the answer starts with
    ANSWER_PREFIX), after the ``context`` QA blocks."""
    return Formatter(tokenizer, "off").prompt_ids(question, context=context)


def encode_qa(tokenizer, question: str, answer: str, max_length: int, spans: list[dict] | None = None) -> dict:
    """One QA pair in the plain template, ``[bos] + prompt + ANSWER_PREFIX + answer + [eos]``, always with
    ``span_kind`` (``spans``: character offsets into ``answer``; see :meth:`Formatter.qa`)."""
    return Formatter(tokenizer, "off", max_length=max_length).qa(question, answer, spans=spans or [])


def encode_row(tokenizer, row: dict, max_length: int, answer_key: str = "answer") -> dict:
    """:func:`encode_qa` of a data row (spans only apply to the ``answer`` field)."""
    spans = row.get("spans") if answer_key == "answer" else None
    return encode_qa(tokenizer, row["question"], row[answer_key], max_length, spans)


def decode_answer(tokenizer, ids: Iterable[int]) -> str:
    """Generated answer ids (plain template) -> text: cut at the first eos, drop specials and the answer prefix."""
    out = []
    for i in ids:
        i = int(i)
        if i == tokenizer.eos_token_id:
            break
        out.append(i)
    text = tokenizer.decode(out, skip_special_tokens=True)
    return text[len(ANSWER_PREFIX):] if text.startswith(ANSWER_PREFIX) else text
