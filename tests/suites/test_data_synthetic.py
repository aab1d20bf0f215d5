"""The embedded fictitious-authors generator: determinism, splits, schema, spans, value sharing."""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from atwu_fast.config.options import ConfigError
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate, load_splits, save_splits

ROOT = Path(__file__).resolve().parents[2]
TOFU_KEYS = {"question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"}
AUTHOR_SPLITS = ("forget", "retain", "holdout")


@pytest.fixture(scope="module")
def cfg():
    return SyntheticConfig()


@pytest.fixture(scope="module")
def splits(cfg):
    return generate(cfg)


def _digest(splits) -> str:
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()


def _occurs(value: str, text: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])", text) is not None


def test_deterministic_in_process(cfg, splits):
    assert generate(cfg) == splits
    assert generate(dataclasses.replace(cfg)) == splits


def test_deterministic_across_processes(cfg, splits):
    code = ("import hashlib, json; from atwu_fast.suites.synthetic.world import SyntheticConfig, generate; "
            "print(hashlib.sha256(json.dumps(generate(SyntheticConfig()), sort_keys=True).encode()).hexdigest())")
    for hashseed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == _digest(splits)


def test_seed_changes_data(cfg, splits):
    other = generate(dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert other != splits
    assert {r["author"] for r in other["forget"]} != {r["author"] for r in splits["forget"]}


def test_split_sizes_and_disjoint_authors(cfg, splits):
    assert list(splits) == ["forget", "retain", "holdout", "general"]
    want = {"forget": cfg.n_forget_authors, "retain": cfg.n_retain_authors, "holdout": cfg.n_holdout_authors}
    authors = {}
    for split in AUTHOR_SPLITS:
        names = [r["author"] for r in splits[split]]
        authors[split] = set(names)
        assert len(authors[split]) == want[split]
        for name in authors[split]:
            facts = [r["fact"] for r in splits[split] if r["author"] == name]
            assert cfg.min_facts <= len(facts) <= cfg.max_facts
            assert len(set(facts)) == len(facts)  # one QA per fact
    assert not authors["forget"] & authors["retain"]
    assert not authors["forget"] & authors["holdout"]
    assert not authors["retain"] & authors["holdout"]
    assert len(splits["general"]) == cfg.n_general
    assert all(r["author"] == "" and r["spans"] == [] for r in splits["general"])
    assert len({r["question"] for r in splits["general"]}) == cfg.n_general
    assert len({r["fact"] for r in splits["general"]}) >= 5


def test_schema(cfg, splits):
    for split, rows in splits.items():
        for r in rows:
            assert TOFU_KEYS | {"author", "fact", "spans"} == set(r), split
            assert all(isinstance(r[k], str) and r[k] for k in TOFU_KEYS - {"perturbed_answer"})
            assert len(r["perturbed_answer"]) == cfg.n_perturbed
            assert len(set(r["perturbed_answer"])) == cfg.n_perturbed
            assert r["answer"] not in r["perturbed_answer"]
            assert r["paraphrased_answer"] not in r["perturbed_answer"]
            if split != "general":
                assert r["paraphrased_answer"] != r["answer"]
                assert r["paraphrased_question"] != r["question"]
                assert r["author"] in r["question"]
                assert 5 <= len(r["answer"].split()) <= 25


def _diff_middle(a: str, b: str) -> tuple[str, str]:
    """The differing middles of a and b once their common prefix and suffix are removed."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    return a[p:len(a) - s], b[p:len(b) - s]


def test_perturbed_share_paraphrase_phrasing(splits):
    for split, rows in splits.items():
        for r in rows:
            values = [sp["text"] for sp in r["spans"] if sp["fact"] == r["fact"]]
            for wrong in r["perturbed_answer"]:
                mid_true, mid_wrong = _diff_middle(r["paraphrased_answer"], wrong)
                assert mid_true and mid_wrong
                if split == "general":
                    assert len(mid_true.split()) <= 2 and len(mid_wrong.split()) <= 2
                else:  # only (part of) the value differs
                    assert mid_true in values[0], (r["paraphrased_answer"], wrong)


def test_answer_phrasing_predictable_from_question(cfg, splits):
    """Question phrasing i always goes with answer phrasing i, for every author of every split."""
    mapping: dict[tuple[str, str], set[str]] = {}
    for split in AUTHOR_SPLITS:
        for r in splits[split]:
            q = r["question"].replace(r["author"], "{name}")
            a = r["answer"]
            for sp in sorted(r["spans"], key=lambda sp: -sp["start"]):
                a = a[:sp["start"]] + "{" + sp["fact"] + "}" + a[sp["end"]:]
            mapping.setdefault((r["fact"], q), set()).add(a)
    assert all(len(answers) == 1 for answers in mapping.values())
    per_fact: dict[str, int] = {}
    for fact, _ in mapping:
        per_fact[fact] = per_fact.get(fact, 0) + 1
    assert max(per_fact.values()) == cfg.templates_per_fact


def test_spans_match_text(splits):
    n_name, n_rows = 0, 0
    for split in AUTHOR_SPLITS:
        for r in splits[split]:
            n_rows += 1
            assert r["spans"]
            for sp in r["spans"]:
                assert set(sp) == {"start", "end", "kind", "fact", "text"}
                assert r["answer"][sp["start"]:sp["end"]] == sp["text"]
                assert sp["kind"] in ("unique", "pooled")
                if sp["fact"] == "name":
                    assert sp["text"] == r["author"] and sp["kind"] == "unique"
            assert [sp["fact"] for sp in r["spans"]].count(r["fact"]) == 1
            n_name += any(sp["fact"] == "name" for sp in r["spans"])
    assert 0.2 * n_rows < n_name < 0.8 * n_rows  # answers sometimes mention the name


def test_unique_values_are_unique_and_pooled_values_shared(splits):
    by_author: dict[str, list[str]] = {}
    for split in ("forget", "retain", "holdout"):
        for r in splits[split]:
            by_author.setdefault(r["author"], []).append(r["answer"])
    others = {a: "\n".join(t for b, ts in by_author.items() if b != a for t in ts) for a in by_author}
    general = "\n".join(r["answer"] for r in splits["general"])
    retain_answers = "\n".join(r["answer"] for r in splits["retain"])
    n_unique = n_pooled = 0
    for split in AUTHOR_SPLITS:
        for r in splits[split]:
            for sp in r["spans"]:
                if sp["kind"] == "unique":
                    n_unique += 1
                    assert not _occurs(sp["text"], others[r["author"]] + "\n" + general), sp
                elif split != "retain":
                    n_pooled += 1
                    assert _occurs(sp["text"], retain_answers), sp
    assert n_unique > 50 and n_pooled > 50
    # pooled values recur across authors; forget uses several distinct values per pooled fact
    forget_pooled = {sp["text"] for r in splits["forget"] for sp in r["spans"] if sp["kind"] == "pooled"}
    assert len(forget_pooled) >= 15


def test_unique_share_and_pool_scale(cfg):
    none = generate(dataclasses.replace(cfg, unique_share=0.0, max_facts=6))
    assert all(sp["kind"] == "pooled" or sp["fact"] == "name" for r in none["forget"] for sp in r["spans"])
    allu = generate(dataclasses.replace(cfg, unique_share=1.0, max_facts=6))
    assert all(sp["kind"] == "unique" for r in allu["forget"] for sp in r["spans"])
    small = generate(dataclasses.replace(cfg, pool_scale=0.4))
    big = generate(dataclasses.replace(cfg, pool_scale=1.5))

    def cities(s):
        return {sp["text"] for split in AUTHOR_SPLITS for r in s[split] for sp in r["spans"] if sp["fact"] == "birthplace"}

    assert len(cities(small)) < len(cities(big))


def test_single_template_paraphrase_equals_answer(cfg):
    s = generate(dataclasses.replace(cfg, templates_per_fact=1, n_forget_authors=3, n_retain_authors=3))
    assert all(r["paraphrased_answer"] == r["answer"] for r in s["forget"])


@pytest.mark.parametrize("change", [{"max_facts": 40}, {"templates_per_fact": 9}, {"n_perturbed": 50},
                                    {"n_general": 100000}, {"min_facts": 0}])
def test_bad_config_raises_one_line(cfg, change):
    with pytest.raises(ConfigError) as e:
        generate(dataclasses.replace(cfg, **change))
    assert "\n" not in str(e.value)


def test_save_load_roundtrip(tmp_path, splits):
    save_splits(splits, tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(f"{s}.jsonl" for s in splits)
    assert load_splits(tmp_path / "d") == splits
    (tmp_path / "d" / "retain.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="retain"):
        load_splits(tmp_path / "d")
