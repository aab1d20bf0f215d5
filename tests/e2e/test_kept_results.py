"""Every quoted result comes from data kept in the repository and cannot drift from it: the comparison
tables regenerate exactly from their runs (``python -m studies.sweep <grid> --tables-only``), and the
README's results table and intervals are cells of those tables."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from studies import sweep

ROOT = Path(__file__).resolve().parents[2]
KEPT = ROOT / "studies" / "results"
GRIDS = ("compare", "compare_tofu")


@pytest.mark.parametrize("grid", GRIDS)
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


def test_readme_intervals_are_in_the_kept_tables():
    kept = " ".join((KEPT / grid / f"{grid}.md").read_text() for grid in GRIDS)
    quoted = re.findall(r"([+\-−]?\d+\.\d+) \[([+\-−]?\d+\.\d+), ([+\-−]?\d+\.\d+)\]", readme_results())
    assert len(quoted) >= 20
    for mean, low, high in quoted:
        mean, low, high = (v.replace("−", "-") for v in (mean, low, high))
        plain = f"{mean.lstrip('+')} [{low.lstrip('+')}, {high.lstrip('+')}]"
        signed = f"[{low}, {high}]"
        assert plain in kept or (signed in kept and mean in kept), f"{mean} [{low}, {high}] is in no kept table"
