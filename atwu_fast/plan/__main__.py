"""``python -m atwu_fast.plan``: predict the peak GPU memory of an unlearning step before a run (the
component-by-component model is :mod:`atwu_fast.plan.planner`'s)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ..train.optim import OPTIMIZERS
from .planner import DTYPE_BYTES, PlanInput, format_plan, load_config, plan


def parse_args(argv=None) -> tuple[PlanInput, bool]:
    ap = argparse.ArgumentParser(prog="python -m atwu_fast.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="config.json path, model directory or hub id")
    ap.add_argument("--method", default=PlanInput.method)
    ap.add_argument("--lora", type=int, default=0, metavar="RANK", help="LoRA rank (0: full fine-tuning)")
    ap.add_argument("--lora-targets", nargs="*", default=[], metavar="NAME",
                    help="names (suffixes) of the decoder blocks' linear modules to adapt "
                         "(default: every Linear/Conv1D of the decoder blocks)")
    ap.add_argument("--optim", default="adamw", choices=OPTIMIZERS)
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPE_BYTES))
    ap.add_argument("--seq-len", type=int, default=512, help="padded tokens per row")
    ap.add_argument("--batch", type=int, default=8, help="rows per micro-batch (forget + retain) on each GPU")
    ap.add_argument("--answer-frac", type=float, default=1.0, help="share of tokens that are answer tokens")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    ap.add_argument("--attn", default="flash_attention_2", choices=["flash_attention_2", "sdpa"])
    ap.add_argument("--loss-chunk", type=int, default=1024, help="train.loss_chunk_size")
    ap.add_argument("--gpu-gb", type=float, default=24.0, help="GPU memory in GiB")
    ap.add_argument("--ranks", type=int, default=1, help="data-parallel GPUs (torchrun --nproc_per_node)")
    ap.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"], help="the engine's --efficiency.parallel")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ns = ap.parse_args(argv)
    if ns.ranks < 1:
        ap.error("--ranks must be >= 1")
    if ns.seq_len < 1 or ns.batch < 1 or not 0 < ns.answer_frac <= 1 or ns.loss_chunk < 1:
        ap.error("--seq-len, --batch, --loss-chunk must be >= 1 and --answer-frac in (0, 1]")
    inp = PlanInput(model=ns.model, method=ns.method, lora_rank=ns.lora, lora_targets=ns.lora_targets,
                    optim=ns.optim, dtype=ns.dtype, seq_len=ns.seq_len, batch=ns.batch, answer_frac=ns.answer_frac,
                    gradient_checkpointing=ns.checkpointing, attn_implementation=ns.attn,
                    loss_chunk_size=ns.loss_chunk, gpu_gb=ns.gpu_gb, ranks=ns.ranks, parallel=ns.parallel)
    return inp, ns.json


def main(argv=None) -> int:
    inp, as_json = parse_args(argv)
    try:
        config = load_config(inp.model)
    except Exception as exc:
        print(f"error: cannot load a transformers config from {inp.model!r}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    try:
        result = plan(inp, config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result), indent=2) if as_json else format_plan(result))
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
