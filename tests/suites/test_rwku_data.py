"""RWKU loader (first K targets), probe prompts and the evaluation on a tiny random model."""

import pytest
from fixtures.tiny import RWKU_DIR, save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from atwu_fast.data.formatting import Formatter
from atwu_fast.data.readers import DataError
from atwu_fast.suites.rwku.evaluate import evaluate_rwku, probe_prompt
from atwu_fast.suites.rwku.suite import load_rwku_sets


def test_first_k_targets():
    one = load_rwku_sets(str(RWKU_DIR), k=1)
    assert one.info["targets"] == ["Stephen King"]
    assert [r["subject"] for r in one.forget] == ["Stephen King", "Stephen King"]
    assert [r["subject"] for r in one.retain] == ["Taylor Swift"]  # the next K targets' texts
    assert {r["subject"] for s in one.eval_sets.values() for r in s} == {"Stephen King"}
    assert len(one.eval_sets["forget_level3"]) == 2 and len(one.eval_sets["mia_retain"]) == 2
    two = load_rwku_sets(str(RWKU_DIR), k=2)
    assert len(two.forget) == 3 and len(two.eval_sets["forget_level1"]) == 2
    with pytest.raises(DataError, match="first 4"):
        load_rwku_sets(str(RWKU_DIR), k=4)


def test_probe_prompts():
    fb = probe_prompt({"query": "X wrote ___."}, "forget_level1")
    assert fb == ("Please complete the blank in the following question.\nQuestion: X wrote ___.\n", "Answer:")
    qa = probe_prompt({"query": "Who?"}, "neighbor_level2")
    assert qa[0].startswith("Please briefly answer") and qa[1] == "Answer:"
    assert probe_prompt({"query": "Q", "type": "affirmative suffix"}, "forget_level3")[1] == ""


def test_evaluate_rwku_tiny(tmp_path):
    path = save_tiny_model(tmp_path / "m", chat=True)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    data = load_rwku_sets(str(RWKU_DIR), k=2)
    logs = evaluate_rwku(model, tok, Formatter(tok, "auto"), data.eval_sets, batch_size=4, max_new_tokens=3)
    for key in ("forget_FB", "forget_QA", "forget_AA", "forget_all", "neighbor_FB", "neighbor_QA", "neighbor_all",
                "mia_FM", "mia_RM", "mia_auc_loss", "mia_auc_min_k_plus_plus"):
        assert key in logs, key
    entry = logs["forget_FB"]["value_by_index"]["0"]
    assert entry["input"].startswith("<s>system: You") is False and entry["input"].endswith("Answer:")
    assert 0 <= logs["forget_all"]["agg_value"] <= 1
    assert logs["mia_FM"]["agg_value"] == pytest.approx(logs["mia_FM"]["loss"]) and logs["mia_FM"]["agg_value"] > 0
