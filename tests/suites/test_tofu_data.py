"""TOFU loaders and formatting on the committed fixtures (exact public schemas)."""

import pytest
import torch
from fixtures.tiny import CHAT_TEMPLATE, TOFU_DIR, tiny_tokenizer

from atwu_fast.data.collate import collate
from atwu_fast.data.formatting import Formatter, ensure_pad_token, word_char_spans
from atwu_fast.data.readers import DataError, load_rows
from atwu_fast.suites import load_benchmark
from atwu_fast.suites.config import BenchmarkConfig
from atwu_fast.suites.tofu.config import TofuConfig
from atwu_fast.suites.tofu.suite import CONFIGS, PERTURBED_FIELDS, load_tofu_sets


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_every_public_config_has_a_fixture_in_its_schema():
    for config in CONFIGS:
        rows = load_rows(str(TOFU_DIR), config)
        assert rows, config
        fields = PERTURBED_FIELDS + ("paraphrased_question",) if config in (
            "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed") else (
            ("question", "answer", "perturbed_answer") if config.endswith("_perturbed") else ("question", "answer"))
        assert all(set(fields) <= set(r) for r in rows), config
    assert all(len(r["perturbed_answer"]) == 5 for r in load_rows(str(TOFU_DIR), "forget10_perturbed"))
    assert all(len(r["perturbed_answer"]) == 3 for r in load_rows(str(TOFU_DIR), "world_facts_perturbed"))


def test_loader_pairs_splits():
    data = load_benchmark(BenchmarkConfig(name="tofu", data_dir=str(TOFU_DIR)), TofuConfig(split="forget01"))
    assert data.name == "tofu" and len(data.forget) == 2
    assert data.forget[0]["question"] == "Where was Nikolai Abilov born?"  # forget01 = the last authors
    assert data.retain == load_rows(str(TOFU_DIR), "retain99")
    assert set(data.eval_sets) == {"forget", "retain", "real_authors", "world_facts", "holdout"}
    assert len(data.eval_sets["forget"]) == 2
    with pytest.raises(DataError, match="unknown TOFU split"):
        load_tofu_sets(str(TOFU_DIR), "forget07")
    with pytest.raises(DataError, match="not found"):
        load_tofu_sets("/nonexistent/tofu", "forget10")


def test_target_words_attach_and_map_to_tokens(tok):
    data = load_tofu_sets(str(TOFU_DIR), "forget10", str(TOFU_DIR / "forget10_target_words.json"))
    assert data.forget[2]["target_words"] == ["Astana", "Kazakhstan"]
    fmt = Formatter(tok, "off", max_length=128)
    row = fmt.row(data.forget[2])
    marked = [t for t, k in zip(row["input_ids"], row["span_kind"]) if k == 2]
    text = tok.decode(marked)
    assert "Astana" in text and "Kazakhstan" in text and "born" not in text
    assert all(k == -1 for k, y in zip(row["span_kind"], row["labels"]) if y == -100)
    assert word_char_spans("Ana and Anabel", ["Ana"]) == [(0, 3)]  # word boundaries


def test_plain_template_row_by_hand(tok):
    fmt = Formatter(tok, "auto", max_length=128)  # no chat template on this tokenizer -> plain
    assert not fmt.use_chat
    q, a = "Where was Nikolai Abilov born?", "Nikolai Abilov was born in Astana, Kazakhstan."
    row = fmt.qa(q, a)
    prompt = [tok.bos_token_id] + tok(f"Question: {q}\nAnswer:", add_special_tokens=False)["input_ids"]
    answer = tok(" " + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["input_ids"] == prompt + answer
    assert row["labels"] == [-100] * len(prompt) + answer
    assert fmt.prompt_ids(q) == prompt


def test_chat_template_keeps_eos_and_padding_never_masks_it(tok):
    tok_chat = tiny_tokenizer(chat=True)
    fmt = Formatter(tok_chat, "on", system_prompt="Be brief.", max_length=128)
    short = fmt.qa("What is the capital of France?", "Paris")
    long = fmt.qa("Which planet is known as the Red Planet?", "Mars is known as the Red Planet.")
    text = tok_chat.decode(short["input_ids"])
    assert text.startswith("<s>system: Be brief.\nuser: What is the capital of France?\nA:")
    assert short["input_ids"][:len(fmt.prompt_ids("What is the capital of France?"))] == \
        fmt.prompt_ids("What is the capital of France?")
    assert short["labels"][-1] == tok_chat.eos_token_id and short["input_ids"][-1] == tok_chat.eos_token_id
    assert tok_chat.decode([t for t in short["labels"] if t != -100]) == " Paris</s>"
    batch = collate([short, long], pad_id=tok_chat.pad_token_id)
    n = len(short["input_ids"])
    assert batch["attention_mask"][0, n - 1] == 1 and batch["attention_mask"][0, n:].sum() == 0
    assert batch["labels"][0, n - 1] == tok_chat.eos_token_id and (batch["labels"][0, n:] == -100).all()
    with pytest.raises(ValueError, match="no chat template"):
        Formatter(tok, "on")
    assert tok_chat.chat_template == CHAT_TEMPLATE


def test_pad_token_never_eos():
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    added = ensure_pad_token(tok)
    assert added and tok.pad_token_id != tok.eos_token_id


def test_raw_text_rows(tok):
    fmt = Formatter(tok, "off", max_length=64)
    row = fmt.text("Isaac Newton formulated the laws of motion.")
    assert row["input_ids"][0] == tok.bos_token_id and row["labels"][0] == -100
    assert row["labels"][1:] == row["input_ids"][1:] and row["input_ids"][-1] == tok.eos_token_id
    assert fmt.text("abc", eos=False)["input_ids"][-1] != tok.eos_token_id
    assert torch.tensor(row["input_ids"]).numel() <= 64
