"""Progress bars, a per-step metrics JSONL log and optional TensorBoard scalars.

Progress bars (tqdm, on stderr) follow one process-wide mode set by :func:`configure`:
``"auto"`` shows them only when stderr is a terminal (quiet in CI, pipes and log files), ``"on"``
always, ``"off"`` never. Library code wraps its loops in :func:`bar` and needs no config.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from tqdm.auto import tqdm

from ..config import check, option

MODES = ("auto", "on", "off")
_mode = "auto"


def configure(mode: str) -> None:
    """Set the progress-bar mode for this process ("auto", "on" or "off")."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    _mode = mode


def enabled() -> bool:
    if _mode == "auto":
        stream = sys.stderr
        return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
    return _mode == "on"


def bar(iterable: Optional[Iterable] = None, desc: str = "", total: Optional[int] = None, leave: bool = False,
        unit: str = "it") -> tqdm:
    """A tqdm bar on stderr that is disabled unless :func:`enabled`."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, unit=unit, disable=not enabled(),
                file=sys.stderr, dynamic_ncols=True)


def batch_starts(n: int, batch_size: int, desc: str) -> Iterable[int]:
    """``range(0, n, batch_size)`` with a progress bar counting rows."""
    with bar(total=n, desc=desc, unit="row") as pbar:
        for start in range(0, n, batch_size):
            yield start
            pbar.update(min(batch_size, n - start))


def _plain(value: Any) -> Any:
    """JSON-safe scalar: tensors and numpy numbers become floats/ints, NaN/inf become null."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


class MetricsLogger:
    """One JSON object per training step in ``path`` (flushed each line, so it can be tailed),
    plus the same scalars to TensorBoard under ``<tag_prefix>/<key>`` when a writer is given.
    ``path`` None logs nothing to a file (a non-zero rank of a distributed run)."""

    def __init__(self, path: str | Path | None, method: str, tensorboard_dir: str | Path | None = None):
        self.method = method
        self._fh = None
        if path is not None:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w")
        self._writer = None
        if tensorboard_dir is not None:
            self._writer = tensorboard_writer(tensorboard_dir)

    def log(self, stats: dict) -> None:
        row = {"method": self.method, **{k: _plain(v) for k, v in stats.items()}}
        if self._fh is not None:
            self._fh.write(json.dumps(row, allow_nan=False) + "\n")
            self._fh.flush()
        if self._writer is not None:
            step = int(stats.get("step", 0))
            for key, value in row.items():
                if key not in ("step", "method") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{self.method}/{key}", value, step)

    def log_scalars(self, step: int, values: dict, prefix: str = "eval") -> None:
        """Extra scalars (e.g. span AUROC at evaluation steps): TensorBoard only."""
        if self._writer is None:
            return
        for key, value in values.items():
            value = _plain(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{self.method}/{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


TENSORBOARD_MISSING = ("log.tensorboard is true but the tensorboard package is not installed; "
                       "pip install 'atwu-fast[tensorboard]' (or tensorboard), or drop --log.tensorboard")


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_writer(log_dir: str | Path):
    """``torch.utils.tensorboard.SummaryWriter`` at ``log_dir``; a clear error when tensorboard is missing."""
    if not tensorboard_available():
        raise RuntimeError(TENSORBOARD_MISSING)
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class LogConfig:
    """Progress bars, per-step metrics, TensorBoard and the HTML run report."""

    tensorboard: bool = option("also log per-step scalars to TensorBoard under <output_dir>/tensorboard "
                           "(needs the tensorboard package: pip install 'atwu-fast[tensorboard]')", False)
    progress: Literal["auto", "on", "off"] = option("progress bars on stderr: auto (only on a terminal), on, off", "auto")
    report: bool = option("write report.html (metrics, token-score heatmaps, curves) and comparison.png", True)

    def validate(self) -> None:
        if self.tensorboard:
            check(tensorboard_available(), TENSORBOARD_MISSING)
