"""Several fine-tuning jobs at once: worker processes with the CPU cores split between them."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch


def _with_threads(threads: int, job: Callable[[], dict]) -> dict:
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # worker processes: no per-file "Writing model shards" bars
    return job()


def run_jobs(jobs: dict[str, Callable[[], dict]]) -> dict[str, dict]:
    """Each job's result, by name. Several jobs on a machine with several cores run in parallel
    worker processes (spawned; ``cores // jobs`` torch threads each), so the jobs must be picklable
    (module-level functions, ``functools.partial``); otherwise one after the other in this process."""
    cores = os.cpu_count() or 1
    if len(jobs) > 1 and cores >= 2:
        threads = max(cores // len(jobs), 1)
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            futures = {name: pool.submit(_with_threads, threads, job) for name, job in jobs.items()}
            return {name: f.result() for name, f in futures.items()}
    return {name: job() for name, job in jobs.items()}
