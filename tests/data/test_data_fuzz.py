"""Property-based: malformed forget/retain files give exit code 2 and one line, never a traceback,
and the output directory is not created. Validation happens before any model is loaded."""

import json

import pytest
from fixtures.tiny import save_tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atwu_fast.unlearn.__main__ import main

GOOD = {"question": "Where was Ana born?", "answer": "In Lisbon."}

values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
rows = st.one_of(
    st.dictionaries(st.sampled_from(["question", "answer", "text", "target_words", "extra"]), values, max_size=4),
    values,
)
# every file gets at least one row that is certainly invalid, so no case is accidentally a valid run
bad_rows = st.sampled_from([
    {"question": "", "answer": "x"}, {"question": "q?"}, {"text": ""}, {"answer": 3, "question": "q"},
    {"text": "t", "target_words": "not a list"}, 7, ["a", "list"], {"unrelated": 1},
])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("fuzz") / "model")


def run(model_dir, forget_path, retain_path, out, capsys, extra=()):
    with pytest.raises(SystemExit) as exc:
        main(["--benchmark", "jsonl", "--model", str(model_dir), "--jsonl.forget_file", str(forget_path),
              "--jsonl.retain_file", str(retain_path), "--output-dir", str(out), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
    return err[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(forget=st.lists(rows, max_size=4), bad=bad_rows, position=st.integers(0, 4))
def test_malformed_rows_are_rejected_cleanly(model_dir, tmp_path, capsys, forget, bad, position):
    forget = list(forget)
    forget.insert(min(position, len(forget)), bad)
    forget_path, retain_path = tmp_path / "f.jsonl", tmp_path / "r.jsonl"
    forget_path.write_text("\n".join(json.dumps(r) for r in forget) + "\n")
    retain_path.write_text(json.dumps(GOOD) + "\n")
    run(model_dir, forget_path, retain_path, tmp_path / "out", capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=60))
def test_garbage_files_are_rejected_cleanly(model_dir, tmp_path, capsys, blob):
    forget_path, retain_path = tmp_path / "f.jsonl", tmp_path / "r.jsonl"
    forget_path.write_bytes(blob + b"\n{not json")
    retain_path.write_text(json.dumps(GOOD) + "\n")
    run(model_dir, forget_path, retain_path, tmp_path / "out", capsys)


def test_missing_file_empty_set_and_truncated_answer(model_dir, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "not found" in run(model_dir, tmp_path / "missing.jsonl", good, tmp_path / "o1", capsys)
    assert "no rows" in run(model_dir, empty, good, tmp_path / "o2", capsys)
    long_q = tmp_path / "long.jsonl"
    long_q.write_text(json.dumps({"question": "word " * 40, "answer": "In Lisbon."}) + "\n")
    message = run(model_dir, long_q, good, tmp_path / "o3", capsys, ["--benchmark.max_length", "12"])
    assert "max_length" in message
    assert "model" not in message.split(":")[0]


def test_bad_model_path_is_a_clean_error(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    message = run(tmp_path / "no-such-model", good, good, tmp_path / "o", capsys)
    assert "could not load" in message
