"""Whether Triton runs under its CPU interpreter (``TRITON_INTERPRET=1``, read when asked)."""

from __future__ import annotations

import os


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
