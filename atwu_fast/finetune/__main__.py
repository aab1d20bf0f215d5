"""``python -m atwu_fast.finetune``: supervised fine-tuning on a TOFU config.

The first step of TOFU's protocol: the target model is fine-tuned on ``full``, the retain model on
``retainNN`` (see :mod:`.command`)."""

from __future__ import annotations

import sys

from ..config.args import parse_config
from ..suites.config import MOVED
from .command import SHORTCUTS, FinetuneRunConfig, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(FinetuneRunConfig, argv, prog="python -m atwu_fast.finetune",
                       description=__doc__.splitlines()[0], shortcuts=SHORTCUTS, moved=MOVED)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
