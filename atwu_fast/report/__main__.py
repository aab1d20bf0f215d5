"""``python -m atwu_fast.report RUN_DIR``: re-write a finished run's report.html and comparison.png."""

from __future__ import annotations

import sys
from pathlib import Path

from .html import write_outputs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m atwu_fast.report RUN_DIR   (re-writes RUN_DIR/report.html and comparison.png)",
              file=sys.stderr)
        return 2
    run = Path(args[0])
    if not (run / "results.json").is_file():
        print(f"error: {run} has no results.json (not a finished run directory)", file=sys.stderr)
        return 2
    try:
        written = write_outputs(run)
    except ValueError as exc:
        print(f"error: {run}: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {written['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
