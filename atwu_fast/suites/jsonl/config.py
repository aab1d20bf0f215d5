"""The ``jsonl`` section: the files of your own forget / retain rows (``--jsonl.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option


@dataclass
class JsonlConfig:
    """Your own rows as JSON Lines: {question, answer} or {text}, optional target_words."""

    forget_file: str = option("forget rows ({question, answer} or {text}, optional target_words)", "")
    retain_file: str = option("retain rows (same format)", "")
