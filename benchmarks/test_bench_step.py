"""End-to-end unlearning step on one model and batch: this engine's ATWU and GradDiff steps against
a GradDiff step done the way the reference harness does it (the model's own forward with
materialised N×V logits for the forget and the retain batch, then the loss). Time and peak-memory
ratios are measured in one run (interleaved medians) and asserted against the targets below."""

from __future__ import annotations

import statistics
import time

import torch
from bench_memory import peak_memory_bytes
from transformers import LlamaConfig, LlamaForCausalLM

from atwu_fast.data.collate import collate
from atwu_fast.methods import get_method
from atwu_fast.methods.atwu.params import ATWUParams
from atwu_fast.methods.gradient_ascent import GradDiffParams
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.trainer import Unlearner

ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
# a vocabulary large next to the width, as in real LLMs, where the N×V logits dominate
SHAPE = dict(vocab=32000, hidden=256, layers=2, rows=8, length=64) if not ON_CUDA else \
    dict(vocab=128256, hidden=2048, layers=4, rows=8, length=512)


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"], intermediate_size=SHAPE["hidden"] * 3,
                      num_hidden_layers=SHAPE["layers"], num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=SHAPE["length"] + 8, tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(DEVICE)


def _rows(n, seed):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, SHAPE["vocab"], (SHAPE["length"],), generator=gen).tolist()
        labels = [-100] * (SHAPE["length"] // 2) + ids[SHAPE["length"] // 2:]
        rows.append({"input_ids": ids, "labels": labels, "span_kind": [0] * len(ids)})
    return rows


FORGET, RETAIN = _rows(SHAPE["rows"], 1), _rows(SHAPE["rows"], 2)


def _engine_step(method: str):
    model = _model()
    params = ATWUParams(update_every=1) if method == "atwu" else GradDiffParams()
    cfg = TrainConfig(steps=1, forget_batch_size=SHAPE["rows"], retain_batch_size=SHAPE["rows"], lr=1e-5)
    unlearner = Unlearner(model, get_method(method), params, cfg, FORGET, RETAIN, pad_id=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return lambda: unlearner.train_step(0, trainable)


def _reference_harness_step():
    """open-unlearning's GradDiff: two model forwards with logits, HF loss, backward, AdamW."""
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    forget = {k: v.to(DEVICE) for k, v in collate(FORGET, 0).items()}
    retain = {k: v.to(DEVICE) for k, v in collate(RETAIN, 0).items()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        f = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"], labels=forget["labels"])
        r = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"], labels=retain["labels"])
        (-f.loss + r.loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


# Targets (ratios inside one run). Measured on 2 CPU cores: engine/reference time 0.62-0.64, peak
# memory 0.43-0.51; ATWU/GradDiff engine step 1.11. The bounds leave room for a noisy shared machine
# but fail if the engine loses its point: materialising the logits, or ATWU costing a second step.
MAX_TIME_RATIO = 1.0  # engine step / reference-harness step
MAX_MEMORY_RATIO = 0.75  # engine peak / reference-harness peak
MAX_ATWU_OVERHEAD = 1.35  # engine ATWU step / engine GradDiff step


def _interleaved_medians(fns: dict, repeats: int = 5) -> dict:
    """Median seconds of each callable, measured round-robin so machine-load drift hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if ON_CUDA:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if ON_CUDA:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def test_engine_step_vs_reference_harness(benchmark):
    steps = {"reference": _reference_harness_step(), "grad_diff": _engine_step("grad_diff"),
             "atwu": _engine_step("atwu")}
    seconds = _interleaved_medians(steps)
    peaks = {name: peak_memory_bytes(fn, DEVICE) for name, fn in steps.items()}
    benchmark.pedantic(steps["atwu"], rounds=3, warmup_rounds=1, iterations=1)
    ratios = {f"{m}_time_over_reference": seconds[m] / seconds["reference"] for m in ("grad_diff", "atwu")}
    ratios.update({f"{m}_memory_over_reference": peaks[m] / peaks["reference"] for m in ("grad_diff", "atwu")})
    ratios["atwu_time_over_grad_diff"] = seconds["atwu"] / seconds["grad_diff"]
    benchmark.extra_info.update(shape=SHAPE, device=torch.cuda.get_device_name() if ON_CUDA else "cpu",
                                median_s=seconds, peak_mib={k: v / 2**20 for k, v in peaks.items()}, **ratios)
    print("\n" + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    for m in ("grad_diff", "atwu"):
        assert ratios[f"{m}_memory_over_reference"] <= MAX_MEMORY_RATIO, ratios
        assert ratios[f"{m}_time_over_reference"] <= MAX_TIME_RATIO, ratios
    assert ratios["atwu_time_over_grad_diff"] <= MAX_ATWU_OVERHEAD, ratios
