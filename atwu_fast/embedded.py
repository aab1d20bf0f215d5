"""The embedded default experiment's assets: synthetic data, tokenizer, target and retain models.

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
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from .config import ExperimentConfig
from .data import encode_qa, generate, train_tokenizer
from .finetune import finetune
from .io import atomic_dir, atomic_write_json, cache_key
from .model import build_tiny_llama

CACHE_VERSION = 1
TRAIN_SPLITS = {"target": ("forget", "retain", "general"), "retain": ("retain", "general")}


@dataclass
class Benchmark:
    splits: dict[str, list[dict]]
    tokenizer: PreTrainedTokenizerFast
    encoded: dict[str, list[dict]]  # per split: encode_qa(question, answer) rows with span_kind
    model_dirs: dict[str, Path]  # "target", "retain"

    def load_model(self, kind: str):
        model = AutoModelForCausalLM.from_pretrained(self.model_dirs[kind], dtype=torch.float32)
        model.eval()
        return model


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


def max_positions(cfg: ExperimentConfig) -> int:
    return cfg.tokenizer.max_length + cfg.eval.max_new_tokens + 8


def _train_one(kind: str, cfg: ExperimentConfig, tokenizer_dir: str, out_dir: str, threads: int) -> dict:
    """Fine-tune one tiny model and save it atomically (runs in a worker process when parallel)."""
    if threads:
        torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # worker processes: no per-file "Writing model shards" bars
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    splits = generate(cfg.data)
    rows = [r for name in TRAIN_SPLITS[kind] for r in splits[name]]
    encoded = [encode_qa(tokenizer, r["question"], r["answer"], cfg.tokenizer.max_length) for r in rows]
    model = build_tiny_llama(cfg.model, tokenizer, max_positions(cfg))
    seed = cfg.model.seed + (0 if kind == "target" else 1)
    summary = finetune(model, encoded, cfg.pretrain, tokenizer.pad_token_id, seed,
                       log=lambda m: print(f"[{kind}]{m}", flush=True))
    summary["rows"] = len(encoded)

    def build(d: Path) -> None:
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        atomic_write_json(d / "finetune_summary.json", summary)

    atomic_dir(out_dir, build)
    return summary


def prepare(cfg: ExperimentConfig, log: Optional[Callable[[str], None]] = print) -> Benchmark:
    log = log or (lambda m: None)
    cache = Path(cfg.cache_dir)
    splits = generate(cfg.data)
    tok_dir = cache / f"tokenizer-{cache_key(CACHE_VERSION, cfg.data, cfg.tokenizer)}"
    if not (tok_dir / "tokenizer.json").exists():
        log(f"training a byte-level BPE tokenizer (vocab {cfg.tokenizer.vocab_size}) -> {tok_dir}")
        tokenizer = train_tokenizer(tokenizer_texts(splits), cfg.tokenizer.vocab_size)
        atomic_dir(tok_dir, tokenizer.save_pretrained)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)

    model_key = cache_key(CACHE_VERSION, cfg.data, cfg.tokenizer, cfg.model, cfg.pretrain, cfg.eval.max_new_tokens)
    model_dirs = {kind: cache / f"{kind}-{model_key}" for kind in TRAIN_SPLITS}
    missing = [k for k, d in model_dirs.items() if not (d / "config.json").exists()]
    if missing:
        log(f"fine-tuning the tiny {' and '.join(missing)} model(s); cached for later runs")
        cores = os.cpu_count() or 1
        if len(missing) > 1 and cores >= 2:
            threads = max(cores // len(missing), 1)
            with ProcessPoolExecutor(max_workers=len(missing), mp_context=get_context("spawn")) as pool:
                futures = {k: pool.submit(_train_one, k, cfg, str(tok_dir), str(model_dirs[k]), threads) for k in missing}
                summaries = {k: f.result() for k, f in futures.items()}
        else:
            summaries = {k: _train_one(k, cfg, str(tok_dir), str(model_dirs[k]), 0) for k in missing}
        for k, s in summaries.items():
            log(f"  {k}: {s['rows']} QA pairs, {s['steps']} steps, final answer NLL {s['final_nll']:.4f}")
    encoded = {
        name: [encode_qa(tokenizer, r["question"], r["answer"], cfg.tokenizer.max_length, spans=r.get("spans"))
               for r in rows]
        for name, rows in splits.items()
    }
    return Benchmark(splits=splits, tokenizer=tokenizer, encoded=encoded, model_dirs=model_dirs)
