"""End-to-end unlearning step on one model and batch: this engine's ATWU and GradDiff steps against
a GradDiff step done the way the reference harness does it (the model's own forward with
materialised N×V logits for the forget and the retain batch, then the loss). Time and peak-memory
ratios are measured in one run and recorded in ``extra_info`` (no timed asserts)."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from bench_memory import peak_memory_bytes
from transformers import LlamaConfig, LlamaForCausalLM

from atwu_fast.config import ATWUParams, GradDiffParams, TrainConfig
from atwu_fast.data import collate
from atwu_fast.methods import get_method
from atwu_fast.trainer import Unlearner

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


def _median_seconds(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if ON_CUDA:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if ON_CUDA:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.parametrize("method", ["atwu", "grad_diff"])
def test_engine_step_vs_reference_harness(benchmark, method):
    reference = _reference_harness_step()
    engine = _engine_step(method)
    reference_s, engine_s = _median_seconds(reference), _median_seconds(engine)
    reference_peak, engine_peak = peak_memory_bytes(reference, DEVICE), peak_memory_bytes(engine, DEVICE)
    benchmark.pedantic(engine, rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        shape=SHAPE, device=torch.cuda.get_device_name() if ON_CUDA else "cpu",
        engine_median_s=engine_s, reference_median_s=reference_s, time_ratio_engine_over_reference=engine_s / reference_s,
        engine_peak_mib=engine_peak / 2**20, reference_peak_mib=reference_peak / 2**20,
        memory_ratio_engine_over_reference=engine_peak / reference_peak,
    )
    print(f"\n{method} step: {engine_s * 1e3:.0f} ms vs reference harness {reference_s * 1e3:.0f} ms "
          f"(×{engine_s / reference_s:.2f}); peak {engine_peak / 2**20:.0f} MiB vs {reference_peak / 2**20:.0f} MiB "
          f"(×{engine_peak / reference_peak:.2f})")
    assert engine_peak > 0 and reference_peak > 0
