"""Reading benchmark rows: JSON (a list or lines), JSONL and parquet files, a local directory holding
one file per config (``<config>.json``, ``.jsonl`` or ``.parquet``, or ``<config>/<split>.<ext>``), or
a hub dataset (``datasets.load_dataset(hub_id, config, split=...)``). Malformed input is a
:class:`DataError` with a one-line message.
"""

from __future__ import annotations

import json
from pathlib import Path

_EXTENSIONS = ("json", "jsonl", "parquet")


class DataError(ValueError):
    """Missing or malformed benchmark data (a user-caused error)."""


def _read_json_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a list of objects")
        return data
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_file(path: str | Path) -> list[dict]:
    """Rows of one JSON (list or lines), JSONL or parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return _read_json_rows(path)


def local_file(directory: Path, config: str, split: str) -> Path | None:
    for ext in _EXTENSIONS:
        for cand in (directory / f"{config}.{ext}", directory / config / f"{split}.{ext}"):
            if cand.is_file():
                return cand
    sub = directory / config
    if sub.is_dir():
        files = sorted(p for ext in _EXTENSIONS for p in sub.glob(f"*.{ext}"))
        if len(files) == 1:
            return files[0]
    return None


def load_rows(source: str, config: str, split: str = "train") -> list[dict]:
    """Rows of ``config`` from a local directory (``source`` exists) or the hub dataset ``source``."""
    directory = Path(source)
    if directory.is_dir():
        path = local_file(directory, config, split)
        if path is None:
            raise DataError(f"{directory}: no file for config '{config}' "
                            f"(expected {config}.json, {config}.jsonl or {config}.parquet)")
        return read_file(path)
    if directory.suffix or source.startswith((".", "/")):
        raise DataError(f"data directory not found: {source}")
    from datasets import load_dataset

    try:
        return load_dataset(source, config, split=split).to_list()
    except Exception as exc:  # network, missing config: one readable line
        raise DataError(f"could not load {source} config '{config}' split '{split}': "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def attach_target_words(rows: list[dict], spans: list[dict], where: str = "spans file") -> list[dict]:
    """Copy ``target_words`` onto ``rows``: matched by ``question`` when the span rows carry one,
    else by position (the released files follow the forget split's row order)."""
    by_question = {s["question"]: s for s in spans if "question" in s}
    out = []
    for i, row in enumerate(rows):
        span = by_question.get(row.get("question")) if by_question else (spans[i] if i < len(spans) else None)
        if span is None:
            raise DataError(f"{where}: no target_words for forget row {i}")
        words = span.get("target_words")
        if isinstance(words, str):
            words = [words]
        if not isinstance(words, list):
            raise DataError(f"{where}: row {i} has no target_words list")
        out.append({**row, "target_words": words})
    return out
