"""Tokenizer training, QA encoding (labels, span kinds, truncation) and prompt encoding."""

import pytest

from atwu_fast.data.formatting import decode_answer, encode_prompt, encode_qa, encode_row, format_answer
from atwu_fast.data.labels import IGNORE_INDEX
from atwu_fast.finetune.tiny import TokenizerConfig, train_tokenizer
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate, tokenizer_corpus


@pytest.fixture(scope="module")
def splits():
    return generate(SyntheticConfig())


@pytest.fixture(scope="module")
def tok(splits):
    return train_tokenizer(tokenizer_corpus(splits), TokenizerConfig().vocab_size)


def test_tokenizer_specials_and_size(tok):
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert len(ids) == 3 and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == TokenizerConfig().vocab_size
    assert tok("Hello there", add_special_tokens=False)["input_ids"] == tok.encode("Hello there")  # no post-processor


def test_tokenizer_deterministic(splits, tok):
    again = train_tokenizer(tokenizer_corpus(splits), TokenizerConfig().vocab_size)
    assert again.get_vocab() == tok.get_vocab()
    text = splits["holdout"][0]["answer"]
    assert again.encode(text) == tok.encode(text)


def test_tokenizer_roundtrip_and_offsets(tmp_path, tok, splits):
    text = format_answer(splits["forget"][0]["answer"]) + " Zürich ✓"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"]) == text  # byte-level: lossless, even off-vocabulary
    assert enc["offset_mapping"][0][0] == 0 and enc["offset_mapping"][-1][1] == len(text)
    tok.save_pretrained(tmp_path)
    from transformers import PreTrainedTokenizerFast

    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert loaded.encode(text) == tok.encode(text)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def test_encode_layout_and_labels(tok, splits):
    row = splits["forget"][0]
    enc = encode_row(tok, row, 96)
    prompt = encode_prompt(tok, row["question"])
    ids, labels, kinds = enc["input_ids"], enc["labels"], enc["span_kind"]
    assert len(ids) == len(labels) == len(kinds)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids[:len(prompt)] == prompt
    n = len(prompt)
    assert labels[:n] == [IGNORE_INDEX] * n and kinds[:n] == [-1] * n
    assert labels[n:] == ids[n:]  # answer tokens and eos are labelled
    assert labels[-1] == tok.eos_token_id and kinds[-1] == 0
    assert all(k >= 0 for k in kinds[n:])
    assert tok.decode(ids[n:-1]) == " " + row["answer"]
    assert decode_answer(tok, ids[n:] + [5, 6]) == row["answer"]
    assert tok.pad_token_id not in ids


def _runs(kinds: list[int], code: int) -> list[list[int]]:
    runs, cur = [], []
    for t, k in enumerate(kinds):
        if k == code:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


@pytest.mark.parametrize("split", ["forget", "retain", "holdout"])
def test_spans_land_on_their_tokens(tok, splits, split):
    for row in splits[split]:
        enc = encode_row(tok, row, 96)
        ids, kinds = enc["input_ids"], enc["span_kind"]
        for code, kind in ((2, "unique"), (1, "pooled")):
            decoded = sorted(tok.decode([ids[t] for t in run]).strip() for run in _runs(kinds, code))
            expected = sorted(sp["text"] for sp in row["spans"] if sp["kind"] == kind)
            assert decoded == expected, (row["answer"], decoded, expected)


def test_unique_wins_and_no_spans(tok):
    answer = "The author was born in Porto and Bergen."
    a, b = answer.index("Porto"), answer.index("Bergen")
    spans = [{"start": a, "end": b + 6, "kind": "pooled", "fact": "x", "text": answer[a:b + 6]},
             {"start": b, "end": b + 6, "kind": "unique", "fact": "y", "text": "Bergen"}]
    enc = encode_qa(tok, "Where?", answer, 96, spans)
    n = len(encode_prompt(tok, "Where?"))
    ids, kinds = enc["input_ids"], enc["span_kind"]
    assert tok.decode([ids[t] for t in range(n, len(ids)) if kinds[t] == 2]).strip() == "Bergen"
    assert tok.decode([ids[t] for t in range(n, len(ids)) if kinds[t] == 1]).strip() == "Porto and"
    plain = encode_qa(tok, "Where?", answer, 96)
    assert plain["span_kind"][n:] == [0] * (len(plain["input_ids"]) - n)


def test_truncation(tok, splits):
    row = splits["forget"][3]
    full = encode_row(tok, row, 1000)
    n = len(encode_prompt(tok, row["question"]))
    cut = encode_row(tok, row, n + 2)
    assert len(cut["input_ids"]) == n + 2
    assert cut["input_ids"] == full["input_ids"][:n + 2]
    assert sum(label != IGNORE_INDEX for label in cut["labels"]) == 2
    one = encode_row(tok, row, n + 1)
    assert sum(label != IGNORE_INDEX for label in one["labels"]) == 1
    with pytest.raises(ValueError, match="no room") as e:
        encode_row(tok, row, n)
    assert row["question"] in str(e.value) and "\n" not in str(e.value).replace("\\n", "")


def test_fits_default_max_length(tok, splits):
    max_length = TokenizerConfig().max_length
    for rows in splits.values():
        for row in rows:
            for key in ("answer", "paraphrased_answer"):
                assert len(encode_row(tok, row, 10_000, key)["input_ids"]) <= max_length
