"""The leak metric (J_P, J_ICR, J_W, J_avg): the deterministic judge, the aggregation, the probes and
their prompts, and its place in the TOFU evaluation."""

import numpy as np
import pytest
import torch
from fixtures.tiny import TOFU_DIR, save_tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from atwu_fast.data.formatting import Formatter, encode_prompt
from atwu_fast.eval import leak
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate
from atwu_fast.suites.tofu.evaluate import evaluate_tofu
from atwu_fast.suites.tofu.suite import load_tofu_sets

torch.set_num_threads(1)


# --------------------------------------------------------------------------- the judge


@pytest.mark.parametrize("text, targets, expected", [
    ("She was born in Astana, Kazakhstan.", ["Astana"], True),
    ("she was born in ASTANA.", ["Astana"], True),  # case-insensitive
    ("the Tolstoy\n  Literary   Award", ["Tolstoy Literary Award"], True),  # whitespace normalised
    ("the Tolstoy Award", ["Tolstoy Literary Award"], False),  # the whole phrase is needed
    ("I do not know.", ["Astana", "Kazakhstan"], False),
    ("Kazakhstan", ["Astana", "Kazakhstan"], True),  # any target word
    ("anything", [], False),
    ("anything", ["", "  "], False),  # empty targets never match
])
def test_contains_target(text, targets, expected):
    assert leak.contains_target(text, targets) is expected


def test_row_targets_sources():
    assert leak.row_targets({"question": "q", "answer": "a", "target_words": ["X Y"]}) == ["X Y"]
    spans = [{"start": 0, "end": 4, "kind": "unique", "fact": "name", "text": "Ann Bo"},
             {"start": 10, "end": 15, "kind": "pooled", "fact": "city", "text": "Paris"},
             {"start": 20, "end": 25, "kind": "unique", "fact": "book", "text": "Vora Kel"}]
    assert leak.row_targets({"question": "q", "answer": "a", "spans": spans}) == ["Paris", "Vora Kel"]
    assert leak.row_targets({"question": "q", "answer": "a", "spans": []}) == []
    # no annotation: the answer's key phrases the question lacks
    assert leak.row_targets({"question": "Where was Nikolai Abilov born?",
                             "answer": "Nikolai Abilov was born in Astana, Kazakhstan."}) == ["Astana", "Kazakhstan"]
    assert leak.key_phrases("Which award did Nikolai Abilov receive?",
                            "Nikolai Abilov received the Tolstoy Literary Award in 1987.") == [
        "Tolstoy Literary Award", "1987"]


# --------------------------------------------------------------------------- aggregation


def test_leak_metrics_by_hand():
    rows = [
        {"original": False, "paraphrase": True, "original_icr": False, "paraphrase_icr": False},  # paraphrase only
        {"original": False, "paraphrase": False, "original_icr": True, "paraphrase_icr": False},  # ICR only
        {"original": False, "paraphrase": False, "original_icr": False, "paraphrase_icr": False},  # none
        {"original": True, "paraphrase": True, "original_icr": True, "paraphrase_icr": True},  # all
        {"original": False, "paraphrase": False, "original_icr": False, "paraphrase_icr": True},  # worst case only
    ]
    out = leak.leak_metrics(rows, kept=[True, True, False, True])
    assert out == {"leak_paraphrase": 2 / 5, "leak_icr": 2 / 5, "leak_worst": 4 / 5, "leak_retain": 3 / 4}
    assert leak.leak_metrics([], []) == {}


def _rows(n):
    return [{"question": f"Question {i}?", "paraphrased_question": f"Rephrased {i}?", "answer": f"It is Zorb{i}.",
             "target_words": [f"Zorb{i}"]} for i in range(n)]


RETAIN = [{"question": f"Retain question {i}?", "answer": f"Retain answer {i}."} for i in range(10)]


def test_evaluate_leak_drives_every_probe_and_aggregates():
    """Rows where only the paraphrase leaks, only ICR leaks, none and all: J_P 1/2, J_ICR 1/2, J_W 3/4."""
    forget = _rows(4)
    leaks_on = {0: {"paraphrase"}, 1: {"original_icr"}, 2: set(), 3: set(leak.PROBES)}
    asked = []

    def fake_generate(probes):
        asked.extend(probes)
        out = []
        for question, context in probes:
            i = int(question.split()[-1].rstrip("?"))
            name = ("original" if question.startswith("Question") else "paraphrase") + ("_icr" if context else "")
            out.append(f"  it is ZORB{i} " if name in leaks_on[i] else "I do not know")
        return out

    values, records = leak.evaluate_leak(fake_generate, forget, RETAIN)
    assert len(asked) == 16  # 4 probes x 4 rows
    assert values == {"leak_paraphrase": 0.5, "leak_icr": 0.5, "leak_worst": 0.75}
    assert [r["leak_worst"] for r in records] == [True, True, False, True]
    assert records[1]["leaked"] == {"original": False, "paraphrase": False, "original_icr": True,
                                    "paraphrase_icr": False}


def test_evaluate_leak_reuses_original_answers_and_judges_retain():
    forget = _rows(3)
    asked = []

    def fake_generate(probes):
        asked.extend(probes)
        return ["nothing"] * len(probes)

    retain_rows = [{"question": "Where was Ann born?", "answer": "Ann was born in Paris.", "target_words": ["Paris"]},
                   {"question": "Where was Bo born?", "answer": "Bo was born in Rome.", "target_words": ["Rome"]}]
    values, _ = leak.evaluate_leak(fake_generate, forget, RETAIN, original=["Zorb0 it is", "no", "no"],
                                   retain_rows=retain_rows, retain_answers=["In Paris.", "In Milan."])
    assert all(q != r["question"] or c for q, c in asked for r in forget)  # originals without context: not asked
    assert len(asked) == 9
    assert values == {"leak_paraphrase": pytest.approx(1 / 3), "leak_icr": 0.0, "leak_worst": pytest.approx(1 / 3),
                      "leak_retain": 0.5}


# --------------------------------------------------------------------------- in-context retain examples


@pytest.fixture(scope="module")
def synthetic():
    return generate(SyntheticConfig(n_forget_authors=4, n_retain_authors=5, n_holdout_authors=1, n_general=4))


def test_icr_examples_are_three_seeded_retain_pairs_never_the_row(synthetic):
    forget, retain = synthetic["forget"], synthetic["retain"]
    retain_pairs = {(r["question"], r["answer"]) for r in retain}
    contexts = []
    for i, row in enumerate(forget):
        probes = leak.row_probes(i, row, retain)
        assert set(probes) == set(leak.PROBES)
        context = probes["original_icr"][1]
        assert probes["paraphrase_icr"][1] == context and probes["original"][1] == ()
        assert len(context) == leak.ICR_EXAMPLES == 3
        assert set(context) <= retain_pairs
        assert all(q != row["question"] for q, _ in context)
        assert not any(leak.contains_target(q + " " + a, leak.row_targets(row)) for q, a in context)
        assert leak.icr_examples(i, row, retain) == context  # deterministic
        contexts.append(context)
    assert len(set(contexts)) > 1  # seeded by the row index


def test_icr_examples_skip_the_row_itself_and_pairs_with_its_target_words():
    row = {"question": "Retain question 0?", "answer": "x", "target_words": ["answer 1", "answer 2"]}
    context = leak.icr_examples(0, row, RETAIN)
    assert len(context) == 3
    assert {q for q, _ in context}.isdisjoint({"Retain question 0?", "Retain question 1?", "Retain question 2?"})


def test_icr_prompt_plain_template_holds_three_pairs_then_the_question(synthetic):
    tok = tiny_tokenizer()
    row, retain = synthetic["forget"][0], synthetic["retain"]
    question, context = leak.row_probes(0, row, retain)["original_icr"]
    text = Formatter(tok, "off").prompt_text(question, context)
    assert text.count("Question: ") == 4 and text.count("\nAnswer:") == 4
    for q, a in context:
        assert f"Question: {q}\nAnswer: {a}\n\n" in text
    assert text.endswith(f"Question: {row['question']}\nAnswer:")
    assert text.count(row["question"]) == 1
    # the synthetic encoder builds the same prompt: bos + tokens of the text
    ids = encode_prompt(tok, question, context=context)
    assert tok.decode(ids, skip_special_tokens=True) == tok.decode(tok(text, add_special_tokens=False)["input_ids"])
    assert encode_prompt(tok, question) == Formatter(tok, "off").prompt_ids(question)


def test_icr_prompt_chat_template_gives_earlier_turns():
    tok = tiny_tokenizer(chat=True)
    fmt = Formatter(tok, "on", system_prompt="Be brief.")
    context = (("Q1?", "A1."), ("Q2?", "A2."), ("Q3?", "A3."))
    text = fmt.prompt_text("Q4?", context)
    assert text == (f"{tok.bos_token}system: Be brief.\nuser: Q1?\nA: A1.{tok.eos_token}user: Q2?\nA: A2.{tok.eos_token}"
                    f"user: Q3?\nA: A3.{tok.eos_token}user: Q4?\nA:")
    assert fmt.prompt_text("Q4?") == f"{tok.bos_token}system: Be brief.\nuser: Q4?\nA:"


def test_cut_continuation():
    assert leak.cut_continuation(" Paris.\n\nQuestion: Where was Bo born?\nAnswer: Rome") == "Paris."
    assert leak.cut_continuation("Paris.") == "Paris."


# --------------------------------------------------------------------------- TOFU


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_tofu_evaluation_has_leak_metrics_with_target_words(tiny):
    model, tok = tiny
    fmt = Formatter(tok, "off", max_length=256)
    data = load_tofu_sets(str(TOFU_DIR), "forget10", str(TOFU_DIR / "forget10_target_words.json"))
    logs = evaluate_tofu(model, tok, fmt, data.eval_sets, batch_size=8, max_new_tokens=3, leak_rows=2)
    for key in ("leak_paraphrase", "leak_icr", "leak_worst", "leak_retain"):
        assert 0.0 <= logs[key]["agg_value"] <= 1.0, key
    rows = logs["leak_worst"]["value_by_index"]
    assert set(rows) == {"0", "1"}
    assert set(rows["0"]["generations"]) == set(leak.PROBES)
    assert rows["0"]["generations"]["original"] == logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]["generation"]
    flags = [any(r["leaked"].values()) for r in rows.values()]
    assert logs["leak_worst"]["agg_value"] == pytest.approx(np.mean(flags))
    # off, or without generations / target words: no leak metrics
    assert "leak_worst" not in evaluate_tofu(model, tok, fmt, data.eval_sets, batch_size=8, max_new_tokens=3)
    plain = load_tofu_sets(str(TOFU_DIR), "forget10")
    assert "leak_worst" not in evaluate_tofu(model, tok, fmt, plain.eval_sets, batch_size=8, max_new_tokens=3,
                                             leak_rows=0)
