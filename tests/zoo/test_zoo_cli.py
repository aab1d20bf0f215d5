"""``python -m atwu_fast.unlearn`` end to end on tiny local non-Llama models with default flags: a
few unlearning steps on JSONL data, the unlearned model saved, reloadable and moved by training."""

from __future__ import annotations

import json
import math

import model_zoo as zoo
import pytest
import torch
from fixtures.tiny import tiny_tokenizer
from safetensors.torch import load_file

from atwu_fast.unlearn.__main__ import main as unlearn_main

pytestmark = pytest.mark.slow

FORGET = [{"question": "Where was Ana born?", "answer": "In Lisbon.", "target_words": ["Lisbon"]},
          {"question": "What does Ana write?", "answer": "Ana writes poems.", "target_words": ["poems"]}]
RETAIN = [{"question": "Where was Bo born?", "answer": "In Oslo."}, {"text": "Bo likes the sea."}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo-data")
    files = {}
    for name, rows in (("forget", FORGET), ("retain", RETAIN)):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return files


@pytest.mark.parametrize("family", ["gemma2", "cohere", "opt", "gpt2"])
def test_unlearn_cli_runs_on_a_tiny_local_model_with_default_flags(family, data, tmp_path):
    tokenizer = tiny_tokenizer()
    model = zoo.build(family, tokenizer=tokenizer)
    model_dir = tmp_path / family
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    assert unlearn_main(["--benchmark", "jsonl", "--model", str(model_dir), "--jsonl.forget_file",
                         str(data["forget"]), "--jsonl.retain_file", str(data["retain"]),
                         "--train.steps", "3", "--benchmark.max_new_tokens", "2", "--log.report", "false",
                         "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (method,) = [m for m in results if (out / m / "model").is_dir()]
    assert math.isfinite(results[method]["forget_Q_A_Prob"]) and math.isfinite(results[method]["retain_text_loss"])
    before = {k: v for k, v in model.state_dict().items()}
    after = load_file(out / method / "model" / "model.safetensors")
    moved = [k for k in after if k in before and not torch.equal(after[k], before[k])]
    assert moved, f"{family}: unlearning left every weight unchanged"
    assert after[next(iter(after))].shape == before[next(iter(after))].shape


def test_unlearn_cli_refuses_a_model_with_an_unknown_logit_transform_in_one_line(data, tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    model = zoo.build("llama", tokenizer=tokenizer)
    model.config.logits_scaling = 3.0  # a made-up family twist: which way it applies is unknown
    model_dir = tmp_path / "odd"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(["--benchmark", "jsonl", "--model", str(model_dir), "--jsonl.forget_file",
                      str(data["forget"]), "--jsonl.retain_file", str(data["retain"]), "--train.steps", "1",
                      "--output-dir", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model family 'llama'") and "logits_scaling=3.0" in err[-1]
    assert not (out / "results.json").exists()
