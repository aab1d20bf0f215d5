"""Evaluation: metric definitions (:mod:`.metrics`), batched model scoring, the TOFU / RWKU / JSONL
suites of metrics with their logs in the reference harness's layout, and token-score alignment."""
