"""``gpu_check.py --dry-run`` on CPU: the script's own logic runs (tiny shapes, Triton interpreter),
so the GPU acceptance check is not written blind."""

from __future__ import annotations

import json

import gpu_check


def test_dry_run_writes_a_complete_report(tmp_path, capsys):
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    files = list(tmp_path.glob("*-cpu-dry-run.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    assert code == (0 if result["ok"] else 1)
    assert result["command"] == f"gpu_check --dry-run --out {tmp_path}" and result["dry_run"]
    assert {"date", "gpu", "torch", "triton", "python", "peer_versions"} <= result.keys()
    # which configuration and backends the device got: on CPU the torch path, so nothing is self-checked
    device = result["device"]
    assert device["capability"] is None and device["backends"] == [] and device["tiles"]["fused"]["BM"] > 0
    checks = {c["check"]: c for c in result["checks"]}
    # correctness is real even on CPU: every backend within its bf16 bounds, every peak within the model
    accuracy = [c for name, c in checks.items() if name.startswith("bf16 ")]
    memory = [c for name, c in checks.items() if "memory model" in name]
    assert len(accuracy) == 3 * len(result["impls"]) and all(c["ok"] is True for c in accuracy)
    assert len(memory) == 2 * 4 * len(result["impls"]) and all(c["ok"] is True for c in memory)
    # what cannot be checked here is reported as not checked, never as passed
    assert checks["kernel tests on the device"]["ok"] is None
    assert all(c["ok"] is None for name, c in checks.items() if "(H200)" in name)
    for label, block in result["timing"].items():
        for peer in result["peers"]:
            assert "skipped" in block["rows"][f"token_nll/{peer}"]
            assert checks[f"{label} token_nll faster than {peer}"]["ok"] is None
        for row in block["rows"].values():
            assert "skipped" in row or (row["median_ms"] > 0 and row["tflops"] > 0 and row["peak_bytes"] >= 0)
        assert block["rows"]["token_nll/triton"]["flops"] == 8 * 32 * 300 * block["shape"]["m"]
    assert not any(c["ok"] is False for c in result["checks"])
    assert not result["ok"] and "INCOMPLETE" in capsys.readouterr().out  # incomplete without a GPU, not passed
