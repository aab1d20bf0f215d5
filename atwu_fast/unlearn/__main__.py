"""``python -m atwu_fast.unlearn``: unlearn the forget split and evaluate.

With no arguments this runs the complete embedded experiment on CPU: synthetic fictitious-authors
data, a locally trained tokenizer, a tiny target model and a retain-only reference model (both
cached), ATWU unlearning (``atwu_logfit``, the default method), and the evaluation table.
"""

from __future__ import annotations

import sys

from ..config.args import fail, parse_config
from ..model.probe import ModelCheckError
from ..suites.config import MOVED
from .driver import run
from .experiment import SHORTCUTS, ExperimentConfig
from .resolve import help_values


def main(argv: list[str] | None = None) -> int:
    cfg, explicit = parse_config(ExperimentConfig, argv, prog="python -m atwu_fast.unlearn",
                                 description=__doc__.splitlines()[0], shortcuts=SHORTCUTS, explicit=True,
                                 moved=MOVED, help_values=help_values)
    try:
        return run(cfg, frozenset(explicit))
    except ModelCheckError as exc:  # a model the engine cannot train correctly: one line, before any result
        fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
