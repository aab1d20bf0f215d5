"""The embedded benchmark's models: a tokenizer trained on its text and two tiny models fine-tuned on it.

Everything is deterministic in the config and cached on disk under a hash of exactly the config
sections it depends on, so a second run reuses the tokenizer and the two fine-tuned models.
The target model is fine-tuned on forget + retain + general QA, the retain model (the reference for
forget quality) on retain + general: the general split plays the role of pre-training knowledge.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from ...data.formatting import encode_qa
from ...data.io import atomic_dir, atomic_write_json, cache_key
from ...model.tiny import ModelConfig, TokenizerConfig, build_tiny_llama, train_tokenizer
from ...train.finetune import FinetuneConfig, finetune
from .world import SyntheticConfig, generate

CACHE_VERSION = 1
TRAIN_SPLITS = {"target": ("forget", "retain", "general"), "retain": ("retain", "general")}


@dataclass
class AssetSpec:
    """The config sections the cached tokenizer and models depend on (and nothing else)."""

    data: SyntheticConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    pretrain: FinetuneConfig
    max_new_tokens: int  # the models' position table must hold prompt + answer + generation

    @property
    def max_positions(self) -> int:
        return self.tokenizer.max_length + self.max_new_tokens + 8


def tokenizer_texts(splits: dict[str, list[dict]]) -> list[str]:
    texts = ["Question: Answer:"]
    for rows in splits.values():
        for row in rows:
            texts.append(row["question"])
            texts.append(row.get("paraphrased_question", ""))
            texts.append(row["answer"])
            texts.append(row.get("paraphrased_answer", ""))
            texts.extend(row.get("perturbed_answer", []))
    return [t for t in texts if t]


def cached_tokenizer(spec: AssetSpec, splits: dict[str, list[dict]], cache: Path,
                     log: Callable[[str], None]) -> tuple[PreTrainedTokenizerFast, Path]:
    """The tokenizer of ``spec`` (trained on ``splits`` and cached on first use) and its directory."""
    tok_dir = cache / f"tokenizer-{cache_key(CACHE_VERSION, spec.data, spec.tokenizer)}"
    if not (tok_dir / "tokenizer.json").exists():
        log(f"training a byte-level BPE tokenizer (vocab {spec.tokenizer.vocab_size}) -> {tok_dir}")
        tokenizer = train_tokenizer(tokenizer_texts(splits), spec.tokenizer.vocab_size)
        atomic_dir(tok_dir, tokenizer.save_pretrained)
    return PreTrainedTokenizerFast.from_pretrained(tok_dir), tok_dir


def model_dirs(spec: AssetSpec, cache: Path) -> dict[str, Path]:
    key = cache_key(CACHE_VERSION, spec.data, spec.tokenizer, spec.model, spec.pretrain, spec.max_new_tokens)
    return {kind: cache / f"{kind}-{key}" for kind in TRAIN_SPLITS}


def _train_one(kind: str, spec: AssetSpec, tokenizer_dir: str, out_dir: str, threads: int) -> dict:
    """Fine-tune one tiny model and save it atomically (runs in a worker process when parallel)."""
    if threads:
        torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # worker processes: no per-file "Writing model shards" bars
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    splits = generate(spec.data)
    rows = [r for name in TRAIN_SPLITS[kind] for r in splits[name]]
    encoded = [encode_qa(tokenizer, r["question"], r["answer"], spec.tokenizer.max_length) for r in rows]
    model = build_tiny_llama(spec.model, tokenizer, spec.max_positions)
    seed = spec.model.seed + (0 if kind == "target" else 1)
    summary = finetune(model, encoded, spec.pretrain, tokenizer.pad_token_id, seed,
                       log=lambda m: print(f"[{kind}]{m}", flush=True))
    summary["rows"] = len(encoded)

    def build(d: Path) -> None:
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        atomic_write_json(d / "finetune_summary.json", summary)

    atomic_dir(out_dir, build)
    return summary


def train_missing_models(spec: AssetSpec, tok_dir: Path, dirs: dict[str, Path], log: Callable[[str], None]) -> None:
    """Fine-tune the models whose cache directory is missing (in parallel worker processes when the
    machine has the cores)."""
    missing = [k for k, d in dirs.items() if not (d / "config.json").exists()]
    if not missing:
        return
    log(f"fine-tuning the tiny {' and '.join(missing)} model(s); cached for later runs")
    cores = os.cpu_count() or 1
    if len(missing) > 1 and cores >= 2:
        threads = max(cores // len(missing), 1)
        with ProcessPoolExecutor(max_workers=len(missing), mp_context=get_context("spawn")) as pool:
            futures = {k: pool.submit(_train_one, k, spec, str(tok_dir), str(dirs[k]), threads) for k in missing}
            summaries = {k: f.result() for k, f in futures.items()}
    else:
        summaries = {k: _train_one(k, spec, str(tok_dir), str(dirs[k]), 0) for k in missing}
    for k, s in summaries.items():
        log(f"  {k}: {s['rows']} QA pairs, {s['steps']} steps, final answer NLL {s['final_nll']:.4f}")


def load_model(directory: Path):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    return model
