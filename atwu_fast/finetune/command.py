"""What ``python -m atwu_fast.finetune`` runs: supervised fine-tuning on a TOFU config (``full``,
``retainNN``, any split) of a model directory, a hub id, or ``tiny`` (a small Llama built from the
``tiny`` section with a byte-level BPE tokenizer trained on TOFU's text), with the efficiency options,
checkpoints and resume of unlearning, the chat template or the plain one.

``<output-dir>/model/`` holds the result (``from_pretrained`` loads it; with LoRA the adapter, or the
merged model with ``--efficiency.save_merged``) and ``finetune_summary.json`` (written with it, so it
marks a finished run); ``config.yaml`` the resolved options; ``checkpoints/`` the latest checkpoint
while training. This module reads the benchmark through :mod:`atwu_fast.suites` and therefore sits
above it, like the unlearning driver; the rest of :mod:`atwu_fast.finetune` sits below.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..config import check, option
from ..config.args import fail
from ..data.formatting import Formatter
from ..data.io import atomic_write_text
from ..data.readers import DataError
from ..model.loading import load_pretrained, load_tokenizer, quiet_libraries
from ..suites.config import BenchmarkConfig
from ..suites.real import encode_training
from ..suites.tofu.config import TofuConfig
from ..suites.tofu.suite import HUB_ID, load_qa_config
from ..suites.tofu.tiny import TINY, tiny_positions, tofu_schedule, tofu_texts
from ..train.config import EfficiencyConfig
from .build import SUMMARY_FILE, finetune_to_dir
from .loop import FinetuneConfig
from .tiny import TinyConfig, build_tiny_llama, train_tokenizer

SHORTCUTS = {"--benchmark": "benchmark.name", "--split": "tofu.split", "--model": "benchmark.model",
             "--output-dir": "output_dir", "--seed": "seed"}


def _benchmark() -> BenchmarkConfig:
    return BenchmarkConfig(name="tofu")


def _tofu() -> TofuConfig:
    return TofuConfig(split="full")


@dataclass
class FinetuneRunConfig:
    """Every option of one fine-tuning run."""

    output_dir: str = option("where the model is written (default: runs/finetune-<split>-<time>)", "")
    resume: bool = option("continue an interrupted run in --output-dir from its latest checkpoint", False)
    threads: int = option("torch CPU threads (0: torch default)", 0)
    seed: int = option("seed of the batch order (a tiny model is initialised with tiny.model.seed)", 0)
    checkpoint_every: int = option("write a resumable checkpoint every K steps (0: none)", 0)
    benchmark: BenchmarkConfig = field(default_factory=_benchmark)
    tofu: TofuConfig = field(default_factory=_tofu)
    finetune: FinetuneConfig = field(default_factory=tofu_schedule)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)

    def validate(self) -> None:
        check(self.benchmark.name == "tofu", "python -m atwu_fast.finetune fine-tunes on TOFU configs (--benchmark tofu)")
        check(bool(self.benchmark.model), "--model is required: a model directory, a hub id, or tiny")
        check(self.threads >= 0 and self.checkpoint_every >= 0, "threads and checkpoint_every must be >= 0")
        self.efficiency.validate("ddp")


def output_dir(cfg: FinetuneRunConfig) -> Path:
    return Path(cfg.output_dir or f"runs/finetune-{cfg.tofu.split}-{time.strftime('%Y%m%d-%H%M%S')}")


def model_and_tokenizer(cfg: FinetuneRunConfig, source: str):
    """(a loader of the model to fine-tune, its tokenizer): a tiny model and a tokenizer trained on the
    benchmark's text, or a pretrained model and its tokenizer."""
    bcfg = cfg.benchmark
    if bcfg.model == TINY:
        tokenizer = train_tokenizer(tofu_texts(source), cfg.tiny.vocab_size)
        return lambda: build_tiny_llama(cfg.tiny.model, tokenizer, tiny_positions(bcfg)), tokenizer
    tokenizer = load_tokenizer(bcfg.tokenizer or bcfg.model, bcfg.trust_remote_code)
    return lambda: load_pretrained(bcfg.model, bcfg.tokenizer, bcfg.dtype, bcfg.device, bcfg.trust_remote_code)[0], tokenizer


def run(cfg: FinetuneRunConfig) -> int:
    """The whole run; returns the exit code. User errors exit 2 with one line, before anything is written."""
    bcfg, out = cfg.benchmark, output_dir(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail("python -m atwu_fast.finetune runs in one process (no torchrun / accelerate launch)")
    if cfg.resume and (out / "model" / SUMMARY_FILE).is_file():
        print(f"{out / 'model'} is already fine-tuned; nothing to do")
        return 0
    if cfg.resume and not (out / "config.yaml").is_file():
        fail(f"--resume needs the --output-dir of an interrupted run; {out} holds none")
    if not cfg.resume and out.exists() and any(out.iterdir()):
        fail(f"output directory {out} is not empty; choose another --output-dir (or --resume)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_libraries()
    source = bcfg.data_dir or HUB_ID
    try:
        rows = load_qa_config(source, cfg.tofu.split)
        load, tokenizer = model_and_tokenizer(cfg, source)
        fmt = Formatter(tokenizer, bcfg.chat_template, bcfg.system_prompt, bcfg.max_length)
        encoded = encode_training(fmt, rows, cfg.tofu.split)
    except (DataError, ValueError) as exc:
        fail(str(exc))
    atomic_write_text(out / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    steps = cfg.finetune.steps(len(encoded))
    print(f"fine-tuning {bcfg.model} on TOFU {cfg.tofu.split}: {len(encoded)} QA pairs, at most {steps} steps "
          f"({'chat template' if fmt.use_chat else 'plain template'})", flush=True)
    efficiency = dataclasses.replace(cfg.efficiency, dtype=bcfg.dtype)  # the weights keep benchmark.dtype
    summary = finetune_to_dir(load, tokenizer, encoded, cfg.finetune, cfg.seed, out / "model", efficiency, print,
                              out / "checkpoints", cfg.checkpoint_every, cfg.resume)
    print(f"{summary['steps']} steps, final answer NLL {summary['final_nll']:.4f} ({summary['seconds']:.0f}s, "
          f"{summary['cpu_seconds']:.0f} CPU s); model written to {out / 'model'}")
    return 0
