"""Recording tuned values: studies run side by side into one file keep every entry."""

import json
import multiprocessing as mp
from pathlib import Path

from atwu_fast.tune.report import record_tuned


def _record(path: str, method: str, rounds: int) -> None:
    for k in range(rounds):
        doc = {"params": {"train.lr": float(k)}, "command": f"tune {method}", "objective": "mu_at_fq",
               "best_value": float(k), "fresh": {}}
        record_tuned(Path(path), method, doc)


def test_parallel_studies_recording_into_one_file_keep_every_entry(tmp_path):
    """Eight processes each record their method 25 times into one file: without the lock between read and
    replace, a writer that read before another's replace drops that method (seen within a few rounds)."""
    path = tmp_path / "tuned.json"
    methods = [f"m{k}" for k in range(8)]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_record, args=(str(path), m, 25)) for m in methods]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    data = json.loads(path.read_text())
    assert sorted(data["methods"]) == methods and sorted(data["studies"]) == methods
    assert all(v == {"train.lr": 24.0} for v in data["methods"].values())
