"""Measured vs predicted peak GPU memory of a real unlearning step (run on a CUDA machine).

    python benchmarks/gpu_memory_check.py                      # the two docs/memory.md cases
    python benchmarks/gpu_memory_check.py --case 1b-full-8bit  # one case
    python benchmarks/gpu_memory_check.py --model <config dir> --lora 16 --optim adamw_8bit --checkpointing

For each case: build the model from its config (random weights, no download) directly on the GPU in
bf16, wrap it as ``python -m atwu_fast.unlearn`` would (LoRA, checkpointing, attention choice, the
optimizer), run ``--steps`` real ``Unlearner.train_step`` calls on synthetic rows of exactly
``--seq-len`` tokens (every token an answer token, as the planner assumes with answer_frac 1), and
take ``torch.cuda.max_memory_allocated`` over the last step (the optimizer state exists then).
Compares with ``atwu_fast.plan`` and writes ``benchmarks/results/gpu_memory_<time>.json`` and
``.md``. The acceptance bound is |measured − predicted| / measured ≤ 15 %.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = REPO / "atwu_fast" / "plan" / "configs"
CASES = {
    "8b-lora-8bit-ckpt": dict(model=str(CONFIGS / "llama-3.1-8b"), lora=16, optim="adamw_8bit", checkpointing=True),
    "1b-full-8bit": dict(model=str(CONFIGS / "llama-3.2-1b"), lora=0, optim="adamw_8bit", checkpointing=False),
}


def measure(model_path: str, lora: int, optim: str, checkpointing: bool, method: str, batch: int, seq_len: int,
            steps: int, chunk: int) -> dict:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM

    from atwu_fast.methods import get_method
    from atwu_fast.model.loading import build_unlearn_model, choose_attn_implementation
    from atwu_fast.plan.planner import PlanInput, plan
    from atwu_fast.train.config import EfficiencyConfig, TrainConfig
    from atwu_fast.train.trainer import Unlearner

    config = AutoConfig.from_pretrained(model_path)
    attn = choose_attn_implementation("auto", "cuda", "bfloat16", MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])

    def load():
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
        return model

    eff = EfficiencyConfig(optim=optim, lora_rank=lora, lora_alpha=2.0 * max(lora, 1),
                           gradient_checkpointing=checkpointing, dtype="bfloat16", attn_implementation=attn)
    m = get_method(method)
    torch.cuda.reset_peak_memory_stats()
    model, reference, _ = build_unlearn_model(load, eff, m.needs_reference)
    gen = torch.Generator().manual_seed(0)
    half = max(batch // 2, 1)

    def rows(k):
        out = []
        for _ in range(k):
            ids = torch.randint(10, config.vocab_size, (seq_len,), generator=gen).tolist()
            out.append({"input_ids": ids, "labels": [-100] + ids[1:], "span_kind": [0] * seq_len})
        return out

    forget, retain = rows(half), rows(batch - half)
    cfg = TrainConfig(steps=steps, forget_batch_size=half, retain_batch_size=batch - half, lr=1e-5,
                      loss_chunk_size=chunk, max_grad_norm=1.0)
    unlearner = Unlearner(model, m, m.params_type(), cfg, forget, retain, pad_id=0, reference=reference, optim=optim)
    trainable = [p for g in unlearner.optimizer.param_groups for p in g["params"]]
    peaks = []
    for step in range(steps):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        unlearner.train_step(step, trainable)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    predicted = plan(PlanInput(model=model_path, method=method, lora_rank=lora, optim=optim, dtype="bfloat16",
                               seq_len=seq_len, batch=batch, gradient_checkpointing=checkpointing,
                               attn_implementation=attn if attn == "flash_attention_2" else "sdpa",
                               loss_chunk_size=chunk, device="cuda"))
    measured = peaks[-1]
    return {"model": model_path, "method": method, "lora": lora, "optim": optim, "checkpointing": checkpointing,
            "attn": attn, "batch": batch, "seq_len": seq_len, "peaks_per_step": peaks, "measured_bytes": measured,
            "predicted_bytes": predicted.peak_bytes, "predicted_components": predicted.components,
            "predicted_moments": predicted.moments,
            "relative_error": (predicted.peak_bytes - measured) / measured}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=list(CASES), action="append")
    ap.add_argument("--model")
    ap.add_argument("--lora", type=int, default=0)
    ap.add_argument("--optim", default="adamw_8bit")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--method", default="atwu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--loss-chunk", type=int, default=1024)
    ap.add_argument("--tolerance", type=float, default=0.15)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this check needs a CUDA device", file=sys.stderr)
        return 2
    cases = ({"custom": dict(model=args.model, lora=args.lora, optim=args.optim, checkpointing=args.checkpointing)}
             if args.model else {k: CASES[k] for k in (args.case or CASES)})
    results = {}
    for name, case in cases.items():
        r = measure(case["model"], case["lora"], case["optim"], case["checkpointing"], args.method, args.batch,
                    args.seq_len, args.steps, args.loss_chunk)
        results[name] = r
        print(f"{name}: measured {r['measured_bytes'] / 2**30:.2f} GiB, predicted {r['predicted_bytes'] / 2**30:.2f} "
              f"GiB ({100 * r['relative_error']:+.1f}%)", flush=True)
        torch.cuda.empty_cache()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
            "command": " ".join(sys.argv)}
    (RESULTS / f"gpu_memory_{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"# GPU memory check {stamp}", "", f"{meta['gpu']}, torch {meta['torch']}", "",
             "| case | measured GiB | predicted GiB | error |", "|---|---|---|---|"]
    lines += [f"| {k} | {r['measured_bytes'] / 2**30:.2f} | {r['predicted_bytes'] / 2**30:.2f} | "
              f"{100 * r['relative_error']:+.1f}% |" for k, r in results.items()]
    (RESULTS / f"gpu_memory_{stamp}.md").write_text("\n".join(lines) + "\n")
    ok = all(abs(r["relative_error"]) <= args.tolerance for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
