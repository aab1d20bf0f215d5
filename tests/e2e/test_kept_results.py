"""Every quoted result comes from data kept in the repository and cannot drift from it: the comparison
tables regenerate exactly from their runs (``python -m studies.sweep <grid> --tables-only``), and the
README's results table and intervals are cells of those tables."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pytest

from studies import sweep

ROOT = Path(__file__).resolve().parents[2]
KEPT = ROOT / "studies" / "results"
GRIDS = ("compare", "compare_tofu_nearest")  # the README's results table
STUDY_GRIDS = ("compare_tofu",  # docs/comparison.md: every method on the earlier tiny-TOFU pairs
               "scorer_drift", "scorer_drift_frontier", "scorer_drift_fresh")  # docs/studies/scorer_drift.md


@pytest.mark.parametrize("grid", GRIDS + STUDY_GRIDS)
def test_kept_tables_regenerate_exactly_from_their_runs(grid, tmp_path):
    (tmp_path / grid).mkdir()
    shutil.copy(KEPT / grid / "runs.jsonl", tmp_path / grid / "runs.jsonl")
    assert sweep.main([grid, "--tables-only", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / grid / f"{grid}.md").read_text() == (KEPT / grid / f"{grid}.md").read_text()


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def method_rows(text: str) -> dict[str, list[str]]:
    """method -> cells of its row in the grid's main table (the first table listing methods)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | n | tuned values |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        row = cells(line)
        rows[row[0]] = row
    return rows


def readme_results() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Results", 1)[1].split("\n## ", 1)[0]


def test_readme_results_table_is_cells_of_the_kept_tables():
    kept = {grid: method_rows((KEPT / grid / f"{grid}.md").read_text()) for grid in GRIDS}
    table = [cells(line) for line in readme_results().splitlines() if line.startswith("| `")]
    assert len(table) >= 5
    for row in table:
        method = row[0].split("`")[1]
        for grid, (fq, mu, level, jw) in zip(GRIDS, (row[1:5], row[5:9])):
            kept_row = kept[grid][method]  # method, n, tuned values, log10 FQ, MU, level, J_W, ...
            assert [fq, mu, level] == kept_row[3:6], (grid, method)
            assert jw == kept_row[6].split()[0], (grid, method)


def test_readme_sample_output_is_a_kept_run():
    """The README's printout of the default command is lines of a kept first run (``…`` elides lines);
    the run's wall time quoted beside it is that run's."""
    kept = (KEPT / "default_run" / "output.txt").read_text().splitlines()
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```\ntraining a byte-level BPE tokenizer", 1)[1].split("```", 1)[0]
    shown = ["training a byte-level BPE tokenizer" + block.splitlines()[0], *block.splitlines()[1:]]
    shown = [line for line in shown if line.strip() and line != "…"]
    assert len(shown) >= 15
    assert [line for line in shown if line not in kept] == []
    assert [line for line in kept if line in shown] == shown  # in the same order
    wall = next(line for line in kept if line.startswith("# wall time"))
    minutes, seconds = re.search(r"(\d+)m([\d.]+)s", wall).groups()
    assert 2.25 <= int(minutes) + float(seconds) / 60 < 2.75  # "about 2½ minutes"
    assert "about 2½ minutes on 2 CPU cores the first time" in readme


def test_tiny_tofu_first_run_numbers_are_the_kept_run():
    """docs/benchmarks.md's table of the tiny-TOFU first run is cells of the kept printout (same column
    names), and the quoted wall times and fine-tuning results are that run's."""
    kept = (KEPT / "tofu_tiny_first_run" / "output.txt").read_text()
    header = next(line for line in kept.splitlines() if line.startswith("| model |"))
    kept_rows = {cells(line)[0]: dict(zip(cells(header), cells(line)))
                 for line in kept.splitlines() if line.startswith("| ") and not line.startswith(("| model", "|---"))}
    doc = (ROOT / "docs" / "benchmarks.md").read_text().split("## TOFU at laptop scale", 1)[1].split("\n## ", 1)[0]
    doc_lines = doc.splitlines()
    doc_header = cells(next(line for line in doc_lines if line.startswith("| model |")))
    rows = [cells(line) for line in doc_lines if line.startswith("| ") and not line.startswith(("| model", "|---"))]
    assert len(rows) == 3
    for row in rows:
        name = row[0].split(" (")[0]
        for column, value in zip(doc_header[1:], row[1:]):
            assert kept_rows[name][column] == value, (name, column)
    real = re.search(r"^real\s+(\d+)m(\d+)\.\d+s", kept, re.M).groups()
    assert f"took {int(real[0])} min {int(real[1])} s wall" in doc
    for kind, steps, nll in re.findall(r"^  (target|retain): \d+ QA pairs, (\d+) steps, final answer NLL ([\d.]+)", kept, re.M):
        assert nll in doc and (steps in doc or kind == "target")
    minutes = int(real[0]) + int(real[1]) / 60
    quoted = re.search(r"about (\d+) minutes on 2 cores the first time", (ROOT / "README.md").read_text())
    assert quoted and abs(int(quoted.group(1)) - minutes) <= 0.5
    assert minutes <= 15  # the bound a first run of the default command keeps


def test_kept_pairs_table_regenerates_exactly_and_is_quoted_whole(tmp_path):
    """The per-seed table of the tiny-TOFU pairs rebuilds from its records (``python -m studies.tofu_pairs
    --tables-only``), and docs/studies/tofu_pairs.md quotes it whole."""
    from studies import tofu_pairs

    kept = KEPT / "tofu_pairs"
    (tmp := tmp_path / "tofu_pairs").mkdir()
    for name in ("pairs.jsonl", "meta.json"):
        shutil.copy(kept / name, tmp / name)
    assert tofu_pairs.main(["--tables-only", "--output-dir", str(tmp.parent)]) == 0
    table = (tmp / "pairs.md").read_text()
    assert table == (kept / "pairs.md").read_text()
    body = table.split("\n", 2)[2].strip()  # without the title
    assert body in (ROOT / "docs" / "studies" / "tofu_pairs.md").read_text()
    records = [json.loads(line) for line in (kept / "pairs.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in records) == list(range(10))


def test_readme_intervals_are_in_the_kept_tables():
    kept = " ".join((KEPT / grid / f"{grid}.md").read_text() for grid in GRIDS)
    quoted = re.findall(r"([+\-−]?\d+\.\d+) \[([+\-−]?\d+\.\d+), ([+\-−]?\d+\.\d+)\]", readme_results())
    assert len(quoted) >= 20
    for mean, low, high in quoted:
        mean, low, high = (v.replace("−", "-") for v in (mean, low, high))
        plain = f"{mean.lstrip('+')} [{low.lstrip('+')}, {high.lstrip('+')}]"
        signed = f"[{low}, {high}]"
        assert plain in kept or (signed in kept and mean in kept), f"{mean} [{low}, {high}] is in no kept table"


# The research logs under docs/studies/ quote only what the kept results hold: every measured number there is a
# cell of a kept table (or a value of a kept benchmark result), so a number from a run folder that was not kept
# (runs/sweep/..., git-ignored) cannot creep back in. Commands and file paths they cite must exist.

STUDIES = sorted((ROOT / "docs" / "studies").glob("*.md"))
RESULT_DIRS = (ROOT / "studies" / "results", ROOT / "benchmarks" / "results")
DECIMAL = r"[+\-−]?\d+\.\d+"


def kept_results_text() -> str:
    return "\n".join(path.read_text() for folder in RESULT_DIRS for path in sorted(folder.rglob("*"))
                     if path.is_file() and path.suffix in {".md", ".json", ".jsonl"})


def prose(text: str) -> str:
    """The text a reader takes as results: fenced code blocks and inline code (commands, option values,
    tuned hyper-parameters) left out."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", " ", text)


def significant_digits(number: str) -> int:
    return len(number.lstrip("+-−").replace(".", "").lstrip("0"))


def plain(number: str) -> str:
    return number.replace("−", "-")


@pytest.mark.parametrize("doc", STUDIES, ids=lambda p: p.name)
def test_study_numbers_are_in_the_kept_results(doc):
    """Strict but workable: every decimal with ≥ 3 significant digits (0.744, -23.988, 0.00183) in a study's
    prose or tables is a whole number token of a kept result file (sign aside: a difference may be quoted the
    other way round); every interval [a, b] appears verbatim, and with the mean written before it (m [a, b]) it
    is that mean's interval in a kept table (m [a, b], or m ± s | [a, b] in a paired table). Rounded or
    recomputed values (0.74, a mean over seeds of runs.jsonl) fail: quote the table's cell instead."""
    kept = kept_results_text()
    tokens = set(re.findall(r"\d+\.\d+", kept))
    text = prose(doc.read_text())
    checked = 0
    for number in re.findall(r"(?<![\w.])" + DECIMAL + r"(?![\w.]*\w)", text):
        if significant_digits(number) >= 3:
            assert plain(number).lstrip("+-") in tokens, f"{doc.name}: {number} is in no kept result file"
            checked += 1
    for mean, low, high in re.findall(r"(?:(" + DECIMAL + r")\s+)?\[(" + DECIMAL + r"), (" + DECIMAL + r")\]", text):
        interval = f"[{plain(low)}, {plain(high)}]"
        assert interval in kept, f"{doc.name}: the interval {interval} is in no kept table"
        if mean:
            pattern = re.escape(plain(mean)) + r"(?: ± \d+\.\d+ \|)? " + re.escape(interval)
            assert re.search(pattern, kept), f"{doc.name}: {mean} {interval} is no mean and interval of a kept table"
    assert checked >= 10, f"{doc.name} quotes {checked} kept numbers: does it still say what the kept data shows?"
    assert "studies/results/" in doc.read_text(), f"{doc.name} does not name the kept file its numbers come from"


@pytest.mark.parametrize("doc", STUDIES, ids=lambda p: p.name)
def test_study_paths_and_commands_exist(doc):
    """Every repository path and relative link a study cites exists, every grid its `python -m studies.sweep`
    commands name is a grid, and every option of its `python -m atwu_fast.unlearn` commands is an option."""
    from atwu_fast.config.args import build_parser
    from atwu_fast.unlearn.experiment import SHORTCUTS, ExperimentConfig

    text = doc.read_text()
    for path in re.findall(r"(?<![\w/.<])((?:atwu_fast|atwu_kernels|benchmarks|docs|studies|tests)/[\w./\-]*\w)", text):
        assert (ROOT / path).exists(), f"{doc.name} cites {path}, which does not exist"
    for link in re.findall(r"\]\(([^)#\s]+)", text):
        assert (doc.parent / link).exists(), f"{doc.name} links {link}, which does not exist"
    commands = re.findall(r"python -m (studies\.sweep|atwu_fast\.unlearn)((?:[ \t]+(?:\\\n)?[ \t]*[^\s`&;#]+)+)", text)
    assert commands, f"{doc.name} gives no command that regenerates its results"
    options = set(build_parser(ExperimentConfig, "unlearn", "", SHORTCUTS)._option_string_actions)
    for module, args in commands:
        words = args.replace("\\\n", " ").split()
        if module == "studies.sweep":
            grids = list(itertools.takewhile(lambda w: not w.startswith("-"), words))
            assert (grids or "--list" in words) and all(g in sweep.GRIDS or g == "all" for g in grids), \
                f"{doc.name}: python -m studies.sweep has no grid {grids}"
        else:
            for word in words:
                if word.startswith("--"):
                    assert word.split("=")[0] in options, f"{doc.name}: python -m atwu_fast.unlearn has no {word}"
