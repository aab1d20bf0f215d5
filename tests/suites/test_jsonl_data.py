"""Generic JSONL forget/retain sets: QA pairs or raw text, optional target words."""

import json

import pytest
from fixtures.tiny import tiny_tokenizer

from atwu_fast.data.formatting import Formatter
from atwu_fast.data.readers import DataError
from atwu_fast.suites import load_benchmark
from atwu_fast.suites.config import BenchmarkConfig
from atwu_fast.suites.jsonl.config import JsonlConfig


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_loader_and_encoding(tmp_path):
    forget = _write(tmp_path / "f.jsonl", [
        {"question": "Where was Nikolai Abilov born?", "answer": "In Astana.", "target_words": ["Astana"]},
        {"text": "Stephen King was born in Portland, Maine.", "target_words": ["Portland"]}])
    retain = _write(tmp_path / "r.jsonl", [{"text": "Isaac Newton formulated the laws of motion."}])
    data = load_benchmark(BenchmarkConfig(name="jsonl"), JsonlConfig(forget_file=forget, retain_file=retain))
    assert len(data.forget) == 2 and data.eval_sets["forget"] is data.forget
    tok = tiny_tokenizer()
    fmt = Formatter(tok, "off", max_length=64)
    qa, text = fmt.row(data.forget[0]), fmt.row(data.forget[1])
    assert qa["labels"][0] == -100 and "span_kind" in qa
    assert "Astana" in tok.decode([t for t, k in zip(qa["input_ids"], qa["span_kind"]) if k == 2])
    assert tok.decode([t for t, k in zip(text["input_ids"], text["span_kind"]) if k == 2]).strip() == "Portland"


def test_jsonl_errors(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    ok = _write(tmp_path / "ok.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match="question\\+answer or text"):
        load_benchmark(BenchmarkConfig(name="jsonl"), JsonlConfig(forget_file=bad, retain_file=ok))
    with pytest.raises(DataError, match="needs --jsonl.forget_file"):
        load_benchmark(BenchmarkConfig(name="jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_benchmark(BenchmarkConfig(name="jsonl"), JsonlConfig(forget_file=str(tmp_path / "broken.jsonl"), retain_file=ok))
