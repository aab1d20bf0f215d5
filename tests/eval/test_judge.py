"""The leak metric's judges: a custom judge replaces target-word matching everywhere it is used, and the
local model judge's batched log-odds equal one-prompt-at-a-time forwards (left padding is invisible)."""

import numpy as np
import pytest
import torch
from fixtures.tiny import TOFU_DIR, save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from atwu_fast.config.options import dotted_to_nested, merge
from atwu_fast.data.formatting import Formatter
from atwu_fast.data.readers import DataError
from atwu_fast.eval import leak
from atwu_fast.eval.judge import JUDGE_PROMPT, ModelJudge, load_judge
from atwu_fast.model.distributed import SINGLE
from atwu_fast.suites.tofu.evaluate import evaluate_tofu
from atwu_fast.suites.tofu.suite import load_tofu_sets
from atwu_fast.unlearn.experiment import ExperimentConfig

torch.set_num_threads(1)

ITEMS = [("Where was Ann born?", ["Paris"], "Ann was born in Paris."),
         ("What did Bo write?", ["The Long Night", "1987"], "I do not know."),
         ("Q?", ["x"], "A much longer answer that pads every other prompt in its batch on the left side " * 3)]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "chat"])
def judge_dir(request, tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("judge") / "model", chat=request.param, seed=3)


def one_by_one(path, judge: ModelJudge, items) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for item in items:
            logits = model(input_ids=torch.tensor([judge.prompt_ids(item)])).logits[0, -1]
            out.append(float(logits[judge.yes].max() - logits[judge.no].max()))
    return out


def test_model_judge_batches_like_single_prompts(judge_dir):
    judge = ModelJudge(str(judge_dir), device="cpu", batch_size=3)
    batched = judge.log_odds(ITEMS)
    # float32 logits of a 1-layer model: padding changes only the summation order (~1e-6 relative)
    np.testing.assert_allclose(batched, one_by_one(judge_dir, judge, ITEMS), rtol=1e-4, atol=1e-5)
    assert judge(ITEMS) == [o > 0 for o in batched]
    assert judge([]) == []


def test_model_judge_prompt_holds_facts_question_and_answer(judge_dir):
    judge = ModelJudge(str(judge_dir), device="cpu")
    tok = AutoTokenizer.from_pretrained(judge_dir)
    text = tok.decode(judge.prompt_ids(ITEMS[1]))
    body = JUDGE_PROMPT.format(facts="The Long Night; 1987", question="What did Bo write?", answer="I do not know.")
    compact = text.replace(" ", "")
    assert body.replace(" ", "") in compact  # the byte-level tokenizer may re-space on decode
    if tok.chat_template:
        assert text.rstrip().endswith("A:")  # the fixture template's generation prompt
    else:
        assert compact.endswith("Reply:")
    assert judge.yes and judge.no and not set(judge.yes) & set(judge.no)


def test_evaluate_leak_uses_the_given_judge_for_probes_and_retain_answers():
    forget = [{"question": f"Question {i}?", "paraphrased_question": f"Rephrased {i}?", "answer": "a",
               "target_words": [f"Zorb{i}"]} for i in range(3)]
    retain = [{"question": f"Retain {i}?", "answer": f"Retain answer {i}.", "target_words": [f"R{i}"]}
              for i in range(6)]
    seen = []

    def never(items, ctx):
        assert ctx is SINGLE  # the evaluation's distributed context reaches the judge
        seen.extend(items)
        return [False] * len(items)

    # every answer names its target: the substring rule would call every probe a leak, the judge none
    values, records = leak.evaluate_leak(lambda probes: [f"It is Zorb{q.split()[-1].rstrip('?')}" for q, _ in probes],
                                         forget, retain, retain_rows=retain,
                                         retain_answers=[f"It is R{i}" for i in range(6)], judge=never)
    assert len(seen) == 3 * 4 + 6  # one call: every probe of every row, then every retain answer
    assert seen[-1] == ("Retain 5?", ["R5"], "It is R5")
    assert values == {"leak_paraphrase": 0.0, "leak_icr": 0.0, "leak_worst": 0.0, "leak_retain": 0.0}
    assert not any(r["leak_worst"] for r in records)

    def by_answer(items, ctx):
        return [answer.endswith("1") for _, _, answer in items]

    values, _ = leak.evaluate_leak(lambda probes: [f"It is Zorb{q.split()[-1].rstrip('?')}" for q, _ in probes],
                                   forget, retain, retain_rows=retain,
                                   retain_answers=[f"It is R{i}" for i in range(6)], judge=by_answer)
    assert values == {"leak_paraphrase": pytest.approx(1 / 3), "leak_icr": pytest.approx(1 / 3),
                      "leak_worst": pytest.approx(1 / 3), "leak_retain": pytest.approx(1 / 6)}
    with pytest.raises(ValueError, match="verdicts"):
        leak.evaluate_leak(lambda probes: ["x"] * len(probes), forget, retain, judge=lambda items, ctx: [True])


def test_tofu_evaluation_with_a_model_judge_records_its_verdicts(tmp_path):
    path = save_tiny_model(tmp_path / "model")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    judge = ModelJudge(str(save_tiny_model(tmp_path / "judge", seed=5)), device="cpu")
    fmt = Formatter(tok, "off", max_length=256)
    data = load_tofu_sets(str(TOFU_DIR), "forget10", str(TOFU_DIR / "forget10_target_words.json"))
    logs = evaluate_tofu(model, tok, fmt, data.eval_sets, batch_size=8, max_new_tokens=3, leak_rows=2,
                         leak_judge=judge)
    assert logs["leak_worst"]["judge"] == judge.name
    rows = logs["leak_worst"]["value_by_index"]
    forget = data.eval_sets["forget"]
    for index, row in rows.items():
        names = list(row["generations"])
        verdicts = judge([(forget[int(index)]["question"], row["target_words"], row["generations"][n]) for n in names])
        assert row["leaked"] == dict(zip(names, verdicts))
    assert logs["leak_worst"]["agg_value"] == pytest.approx(np.mean([r["leak_worst"] for r in rows.values()]))
    plain = evaluate_tofu(model, tok, fmt, data.eval_sets, batch_size=8, max_new_tokens=3, leak_rows=2)
    assert plain["leak_worst"]["judge"] == "target_words"


def test_a_judge_that_cannot_load_fails_before_training(tmp_path):
    from atwu_fast.suites import make_suite

    model = save_tiny_model(tmp_path / "model")
    cfg = merge(ExperimentConfig(), dotted_to_nested({
        "benchmark.name": "tofu", "benchmark.data_dir": str(TOFU_DIR), "benchmark.model": str(model),
        "benchmark.spans_file": str(TOFU_DIR / "forget10_target_words.json"),
        "tofu.leak_judge": str(tmp_path / "no-such-judge")}))
    with pytest.raises(DataError, match="no-such-judge"):
        make_suite(cfg).load_data(lambda m: None)
    load_judge.cache_clear()


def test_embedded_evaluation_passes_its_judge_to_the_leak_metric(tmp_path):
    from atwu_fast.suites.synthetic.evaluate import evaluate_model
    from atwu_fast.suites.synthetic.world import SyntheticConfig, generate

    path = save_tiny_model(tmp_path / "model")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    splits = generate(SyntheticConfig(n_forget_authors=2, n_retain_authors=2, n_holdout_authors=1, n_general=2))
    calls = []

    def always(items, ctx):
        calls.append(len(items))
        return [True] * len(items)

    out = evaluate_model(model, tok, splits, max_length=128, batch_size=8, max_new_tokens=2, leak_rows=3,
                         leak_judge=always).metrics
    assert len(calls) == 1 and out["leak_worst"] == 1.0 and out["leak_retain"] == 1.0
    off = evaluate_model(model, tok, splits, max_length=128, batch_size=8, max_new_tokens=2, leak_rows=3).metrics
    assert off["leak_worst"] < 1.0  # two generated tokens rarely name a fact value: matching says so
