"""Unlearning runs: the experiment config (:mod:`.experiment`), the one driver over every benchmark
(:mod:`.driver`), what a run writes (:mod:`.outputs`); ``python -m atwu_fast.unlearn`` is :mod:`.__main__`."""
