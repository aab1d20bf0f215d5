"""The embedded benchmark's models: a tokenizer trained on its text and two tiny models fine-tuned on it.

Everything is deterministic in the config and cached on disk under a hash of exactly the config
sections it depends on, so a second run reuses the tokenizer and the two fine-tuned models.
The target model is fine-tuned on forget + retain + general QA, the retain model (the reference for
forget quality) on retain + general: the general split plays the role of pre-training knowledge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from ...data.formatting import encode_qa
from ...data.io import atomic_dir, cache_key
from ...finetune.build import finetune_to_dir
from ...finetune.loop import FinetuneConfig
from ...finetune.parallel import run_jobs
from ...finetune.tiny import ModelConfig, TokenizerConfig, build_tiny_llama, train_tokenizer
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
    key = cache_key(CACHE_VERSION, spec.data, spec.tokenizer, spec.model, spec.pretrain.cache_identity(),
                    spec.max_new_tokens)
    return {kind: cache / f"{kind}-{key}" for kind in TRAIN_SPLITS}


def _train_one(kind: str, spec: AssetSpec, tokenizer_dir: str, out_dir: str) -> dict:
    """Fine-tune one tiny model and save it atomically (a worker process when parallel)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    splits = generate(spec.data)
    rows = [r for name in TRAIN_SPLITS[kind] for r in splits[name]]
    encoded = [encode_qa(tokenizer, r["question"], r["answer"], spec.tokenizer.max_length) for r in rows]
    seed = spec.model.seed + (0 if kind == "target" else 1)
    return finetune_to_dir(lambda: build_tiny_llama(spec.model, tokenizer, spec.max_positions), tokenizer, encoded,
                           spec.pretrain, seed, out_dir, log=lambda m: print(f"[{kind}]{m}", flush=True))


def train_missing_models(spec: AssetSpec, tok_dir: Path, dirs: dict[str, Path], log: Callable[[str], None]) -> None:
    """Fine-tune the models whose cache directory is missing (in parallel worker processes when the
    machine has the cores)."""
    missing = [k for k, d in dirs.items() if not (d / "config.json").exists()]
    if not missing:
        return
    log(f"fine-tuning the tiny {' and '.join(missing)} model(s); cached for later runs")
    summaries = run_jobs({k: partial(_train_one, k, spec, str(tok_dir), str(dirs[k])) for k in missing})
    for k, s in summaries.items():
        log(f"  {k}: {s['rows']} QA pairs, {s['steps']} steps, final answer NLL {s['final_nll']:.4f}")


def load_model(directory: Path):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    return model
