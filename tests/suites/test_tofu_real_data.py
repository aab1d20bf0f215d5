"""Every real TOFU config (``tofu/`` under ``ATWU_TEST_DATA``, tests/fixtures/real_data.py) loads through the
loaders with the row counts and relations its README documents, and the target-word spans attach to the
forget rows."""

import json

import pytest
from fixtures.real_data import require_real_tofu

from atwu_fast.data.readers import load_rows
from atwu_fast.suites.tofu.suite import CONFIGS, PERTURBED_FIELDS, load_tofu_sets

# README: 200 authors x 20 QA; forget01/05/10 = 2/10/20 authors, retainNN the rest; holdoutNN sized
# like forgetNN; retain_perturbed 20 authors; real_authors 100 and world_facts 117 rows.
ROWS = {"full": 4000, "forget01": 40, "forget05": 200, "forget10": 400, "retain99": 3960, "retain95": 3800,
        "retain90": 3600, "forget01_perturbed": 40, "forget05_perturbed": 200, "forget10_perturbed": 400,
        "retain_perturbed": 400, "real_authors": 100, "real_authors_perturbed": 100, "world_facts": 117,
        "world_facts_perturbed": 117, "holdout01": 40, "holdout05": 200, "holdout10": 400}


def test_every_config_loads_with_its_documented_rows():
    tofu = require_real_tofu()
    assert set(CONFIGS) | {"full"} == set(ROWS)
    rows = {c: load_rows(str(tofu), c) for c in ROWS}
    assert {c: len(r) for c, r in rows.items()} == ROWS
    for c, r in rows.items():
        fields = PERTURBED_FIELDS if c.endswith("perturbed") and c.startswith(("forget", "retain")) else (
            ("question", "answer", "perturbed_answer") if c.endswith("perturbed") else ("question", "answer"))
        assert all(isinstance(row[f], str if f != "perturbed_answer" else list) for row in r for f in fields), c
    # the README's relations: full = retainNN + forgetNN; forgetNN = forgetNN_perturbed's question/answer
    for nn in ("01", "05", "10"):
        assert rows[f"retain{100 - int(nn)}"] + rows[f"forget{nn}"] == rows["full"]
        assert [(r["question"], r["answer"]) for r in rows[f"forget{nn}_perturbed"]] == [
            (r["question"], r["answer"]) for r in rows[f"forget{nn}"]]
    assert {len(r["perturbed_answer"]) for r in rows["retain_perturbed"] + rows["forget10_perturbed"]} == {5}
    assert {len(r["perturbed_answer"]) for r in rows["real_authors_perturbed"] + rows["world_facts_perturbed"]} == {3}


@pytest.mark.parametrize("split", ["forget01", "forget05", "forget10"])
def test_load_tofu_sets_on_the_real_files(split):
    tofu = require_real_tofu()
    nn = split[-2:]
    spans_file = tofu / f"{split}_target_words.json"
    data = load_tofu_sets(str(tofu), split, str(spans_file))
    assert (len(data.forget), len(data.retain)) == (ROWS[split], ROWS[f"retain{100 - int(nn)}"])
    assert {k: len(v) for k, v in data.eval_sets.items()} == {
        "forget": ROWS[split], "retain": 400, "real_authors": 100, "world_facts": 117, "holdout": ROWS[split]}
    spans = {json.loads(line)["question"]: json.loads(line)["target_words"]
             for line in spans_file.read_text().splitlines() if line.strip()}
    assert [r["target_words"] for r in data.forget] == [spans[r["question"]] for r in data.forget]
    assert [r["target_words"] for r in data.eval_sets["forget"]] == [r["target_words"] for r in data.forget]
    with_words = sum(bool(r["target_words"]) for r in data.forget)
    if split == "forget10":
        assert with_words == 393  # README: 393 of the 400 forget10 rows have at least one
    # every target word is a string of its row's answer (the spans are located in the answer text).
    # Note: the files come from per-split lists, so forget01/05 rows' words differ from the same rows'
    # words in forget10's file (19 of 40 and 135 of 200 rows): span metrics differ by split.
    assert all(w in r["answer"] for r in data.forget for w in r["target_words"])
