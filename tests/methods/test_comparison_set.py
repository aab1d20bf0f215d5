"""The comparison set in the loop: SEUL's mask, DPO's preferred answers, RMU's parameters and
activations, UNDIAL's teacher, and ATWU's scores as a plug-in weight of other losses."""

import dataclasses

import pytest
import torch
from tiny_unlearning import tiny_data, tiny_model

from atwu_fast.config import ConfigError
from atwu_fast.methods import METHODS, PLUGINS, get_method
from atwu_fast.methods.preference import REFUSALS
from atwu_fast.methods.seul import select_tokens
from atwu_fast.methods.weights import SOURCES, Weighted
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.trainer import Unlearner
from atwu_fast.unlearn.experiment import ExperimentConfig


def test_seul_selects_surprising_tokens_and_fills_short_gaps():
    nll = torch.tensor([0.1, 3.0, 0.1, 0.1, 3.0, 0.1, 0.1, 0.1, 0.1, 3.0])
    # mean 0.97, std 1.39: with k = 0 the three 3.0 tokens; the 2-token gap (2, 3) is filled, the 4-token one not
    mask = select_tokens(nll, k=0.0, max_gap=2)
    assert mask.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    assert select_tokens(nll, k=0.0, max_gap=0).tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    assert select_tokens(nll, k=10.0, max_gap=2).sum() == 0  # nothing is that surprising


def test_registry_lists_every_method_and_plug_in_pair():
    for name in ("rmu", "dpo", "idk_dpo", "undial", "seul"):
        assert name in METHODS
    assert {m.name for m in PLUGINS} == {f"{b}+atwu" for b in ("grad_diff", "npo", "simnpo", "dpo", "idk_dpo",
                                                                 "undial", "rmu")}
    assert ExperimentConfig(methods=["all"]).method_list() == list(METHODS)
    assert len(REFUSALS) >= 30 and len(set(REFUSALS)) == len(REFUSALS)


def test_plug_in_names_sections_and_errors():
    cfg = ExperimentConfig(method="npo", weights="atwu_faithful")
    assert cfg.method_list() == ["npo+atwu_faithful"]
    method = get_method("npo+atwu_faithful")
    sections = method.sections(cfg)
    assert isinstance(sections, Weighted) and sections.base is cfg.npo and sections.source is cfg.atwu
    resolved = method.params(sections)
    assert resolved.source.lambda_fit == 0.0 and resolved.source.lambda_reward == 1.0  # the faithful objective
    assert get_method("npo+atwu").params(sections).source.lambda_fit == 1.0  # +atwu: the default (log-fit) one
    with pytest.raises(KeyError, match="does not take token weights"):
        get_method("wga+atwu")
    with pytest.raises(KeyError, match="unknown weight source"):
        get_method("npo+magic")
    with pytest.raises(ConfigError, match="unknown weight source"):
        dataclasses.replace(ExperimentConfig(), weights="magic").validate()
    assert set(SOURCES) >= {"atwu", "seul", "truth", "truth_facts", "atwu_faithful"}


@pytest.fixture(scope="module")
def tiny():
    tok, enc = tiny_data()
    rows = generate(SyntheticConfig(n_forget_authors=3, n_retain_authors=4, n_holdout_authors=0, n_general=4))
    return tok, enc, rows, tiny_model(tok).state_dict()


def run(tiny, name: str, steps: int = 3, **kw):
    tok, enc, rows, state = tiny
    method = get_method(name)
    reference = tiny_model(tok, state).requires_grad_(False) if method.needs_reference else None
    cfg = TrainConfig(steps=steps, forget_batch_size=3, retain_batch_size=3, lr=1e-2)
    from atwu_fast.data.formatting import encode_qa

    unlearner = Unlearner(tiny_model(tok, state), method, method.sections(ExperimentConfig()), cfg, enc["forget"],
                          enc["retain"], tok.pad_token_id, reference=reference, forget_source=rows["forget"],
                          encode=lambda q, a: encode_qa(tok, q, a, 64), **kw)
    return unlearner, unlearner.run()


@pytest.mark.parametrize("name", ["rmu", "dpo", "idk_dpo", "undial", "seul", "npo+atwu", "dpo+atwu", "rmu+atwu",
                                  "undial+atwu", "atwu+seul", "simnpo+truth"])
def test_every_new_method_trains(tiny, name):
    unlearner, result = run(tiny, name)
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and len(losses) == 3
    moved = [not torch.equal(a, b) for a, b in zip(unlearner.model.state_dict().values(), tiny[3].values())]
    assert any(moved)


def test_rmu_trains_only_the_chosen_mlps(tiny):
    unlearner, _ = run(tiny, "rmu")
    changed = {k for k, v in unlearner.model.state_dict().items() if not torch.equal(v, tiny[3][k])}
    assert changed and all(".mlp." in k and "layers.0." in k for k in changed)  # 1-layer model: layer 0's MLP
    assert unlearner.hooks.control.norm().item() == pytest.approx(2.0, rel=1e-5)  # c·u, |u| = 1


def test_dpo_prefers_the_perturbed_answer_and_idk_a_refusal(tiny):
    tok, enc, rows, _ = tiny
    unlearner, _ = run(tiny, "dpo", steps=1)
    first = unlearner.hooks.winners[0]
    answer = tok.decode([t for t in first["labels"] if t != -100], skip_special_tokens=True).strip()
    assert answer == rows["forget"][0]["perturbed_answer"][0]
    unlearner, _ = run(tiny, "idk_dpo", steps=1)
    refusals = {tok.decode([t for t in w["labels"] if t != -100], skip_special_tokens=True).strip()
                for w in unlearner.hooks.winners}
    # (a long question can leave room for only part of a refusal within max_length)
    assert all(any(r.startswith(x) for r in REFUSALS) for x in refusals) and len(refusals) > 1  # varied, seeded


def test_plug_in_scorer_learns_and_weights_the_loss(tiny):
    unlearner, result = run(tiny, "npo+atwu")
    assert unlearner.hooks.scorer.weight.abs().sum() > 0  # the log-fit scorer trained alongside NPO
    assert "score_mean" in result.history[-1]


def test_seul_mask_covers_every_forget_row(tiny):
    unlearner, result = run(tiny, "seul", steps=1)
    tok, enc, _, _ = tiny
    masks = unlearner.hooks.masks
    assert len(masks) == len({tuple(r["input_ids"]) for r in enc["forget"]})
    selected = torch.cat(list(masks.values()))
    assert 0 < selected.mean() < 1 and 0 < result.history[0]["mask_frac"] < 1
