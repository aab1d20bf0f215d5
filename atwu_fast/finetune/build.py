"""A fine-tuned model directory: the model made with the efficiency options, fine-tuned
(:mod:`.loop`), saved with its tokenizer and a training summary, all at once (a crash leaves no
partial directory; with a checkpoint directory the training itself resumes)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from ..data.io import atomic_dir, atomic_write_json
from ..model.loading import build_unlearn_model, save_unlearned
from ..model.probe import exact_packing
from ..train.config import EfficiencyConfig
from .loop import FinetuneConfig, FineTuner

SUMMARY_FILE = "finetune_summary.json"


def finetune_to_dir(load: Callable[[], object], tokenizer, encoded: list[dict], cfg: FinetuneConfig, seed: int,
                    out_dir: str | Path, efficiency: Optional[EfficiencyConfig] = None,
                    log: Optional[Callable[[str], None]] = None, checkpoint_dir: Optional[Path] = None,
                    checkpoint_every: int = 0, resume: bool = False) -> dict:
    """Fine-tune ``load()`` (a fresh model) on ``encoded`` rows and write ``out_dir`` (the model, or with
    LoRA its adapter or ``efficiency.save_merged`` the merged model; the tokenizer; ``finetune_summary.json``).
    Checkpoints go to ``checkpoint_dir`` (removed once ``out_dir`` is written). Returns the summary."""
    efficiency = efficiency or EfficiencyConfig()
    model, _, lora = build_unlearn_model(load, efficiency, needs_reference=False)
    wall, cpu = time.perf_counter(), time.process_time()
    tuner = FineTuner(model, encoded, cfg, tokenizer.pad_token_id, seed, efficiency.optim,
                      exact_packing(model, efficiency.packing))
    summary = tuner.run(log, checkpoint_dir, checkpoint_every, resume)
    summary.update(rows=len(encoded), seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)

    def build(d: Path) -> None:
        save_unlearned(model, lora, d, efficiency.save_merged)
        tokenizer.save_pretrained(d)
        atomic_write_json(d / SUMMARY_FILE, {**summary, "history": tuner.history})

    atomic_dir(out_dir, build)
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return summary
