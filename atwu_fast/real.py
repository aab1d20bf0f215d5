"""Real-benchmark runs: load a model (directory or hub id), a benchmark (TOFU, RWKU, JSONL), unlearn
with the shared :class:`~atwu_fast.trainer.Unlearner`, and evaluate with the reference harness's
metrics and log layout. Used by ``python -m atwu_fast.unlearn --benchmark ...`` and (evaluation
only) ``python -m atwu_fast.eval``. A run writes the same report as the embedded benchmark, and a
resumed run keeps the methods that had finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from . import progress
from .cli import fail
from .config import BenchmarkConfig, ExperimentConfig
from .data.formatting import Formatter, ensure_pad_token
from .data.registry import BenchmarkData, DataError, load_benchmark
from .distributed import SINGLE, DistContext, collective_eval, full_state_dict, init_from_env, sharded_root, shutdown
from .eval import metrics
from .eval.logs import RetainReference, by_index, entry, save_logs, summarize
from .eval.rwku import evaluate_rwku
from .eval.scoring import row_tokens
from .eval.tofu import TofuScorer, evaluate_tofu, rouge_entries, score_entry
from .io import atomic_write_json, atomic_write_text
from .loading import build_unlearn_model, save_unlearned
from .real_scores import forget_token_scores, save_token_scores
from .report import columns_for, results_table
from .resume import METRICS_FILE, finished_metrics
from .trainer import DivergenceError

DEFAULT_NEW_TOKENS = {"tofu": 200, "rwku": 30, "jsonl": 200}
LOG_NAMES = {"tofu": "TOFU", "rwku": "RWKU", "jsonl": "JSONL"}


def resolve_device(name: str) -> torch.device:
    """``auto``: this process's CUDA device (a distributed rank's own GPU), else the CPU."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def uses_cuda(name: str) -> bool:
    """Whether ``benchmark.device`` puts the model on a GPU (NCCL for a distributed run)."""
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def load_tokenizer(bcfg: BenchmarkConfig):
    """The tokenizer alone, with a pad token distinct from eos (see :func:`load_model`)."""
    from transformers import AutoTokenizer

    if not bcfg.model:
        raise DataError("a real benchmark needs --model (a model directory or hub id)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(bcfg.tokenizer or bcfg.model, trust_remote_code=bcfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DataError(f"could not load the tokenizer of '{bcfg.tokenizer or bcfg.model}': "
                        f"{str(exc).splitlines()[0]}") from None
    ensure_pad_token(tokenizer)
    return tokenizer


def load_model(bcfg: BenchmarkConfig):
    """Model and tokenizer from a directory or hub id (no remote code); the tokenizer gets a pad
    token distinct from eos (unk, or an added one with the embeddings resized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not bcfg.model:
        raise DataError("a real benchmark needs --model (a model directory or hub id)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(bcfg.tokenizer or bcfg.model, trust_remote_code=bcfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(bcfg.model, dtype=getattr(torch, bcfg.dtype),
                                                     trust_remote_code=bcfg.trust_remote_code)
    except OSError as exc:
        raise DataError(f"could not load model '{bcfg.model}': {str(exc).splitlines()[0]}") from None
    if ensure_pad_token(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.to(resolve_device(bcfg.device))
    model.eval()
    return model, tokenizer


def formatter(tokenizer, bcfg: BenchmarkConfig) -> Formatter:
    return Formatter(tokenizer, bcfg.chat_template, bcfg.system_prompt, bcfg.max_length)


def new_tokens(bcfg: BenchmarkConfig) -> int:
    return bcfg.max_new_tokens or DEFAULT_NEW_TOKENS.get(bcfg.name, 200)


def evaluate_jsonl(model, tokenizer, fmt: Formatter, sets: dict, batch_size: int, max_new_tokens: int,
                   generate_text: bool = True) -> dict:
    """Per set: QA rows → Prob and ROUGE-L recall (forget: also ES and EM); text rows → mean NLL."""
    logs: dict = {}
    s = TofuScorer(model, tokenizer, fmt, batch_size, max_new_tokens)
    for name in ("forget", "retain"):
        rows = sets.get(name) or []
        qa = [r for r in rows if "question" in r]
        texts = [r for r in rows if "question" not in r]
        if qa:
            toks = s.tokens([(r["question"], r["answer"]) for r in qa], argmax=name == "forget")
            probs = metrics.mean_nll_to_prob(toks.mean_nll())
            logs[f"{name}_Q_A_Prob"] = entry(probs.mean(), by_index(
                [{"prob": float(p), "avg_loss": float(a)} for p, a in zip(probs, toks.mean_nll())]))
            if name == "forget":
                preds, labels = [a[:-1] for a in toks.argmax], [y[:-1] for y in toks.labels]
                logs["extraction_strength"] = score_entry(metrics.extraction_strength(preds, labels))
                logs["exact_memorization"] = score_entry(metrics.exact_memorization(preds, labels))
            if generate_text:
                gens, inputs = s.generations(qa)
                vals = rouge_entries(gens, [r["answer"] for r in qa], inputs)
                logs[f"{name}_Q_A_ROUGE"] = entry(np.mean([v["rougeL_recall"] for v in vals]), by_index(vals))
        if texts:
            toks = row_tokens(model, [fmt.text(r["text"]) for r in texts], tokenizer.pad_token_id, batch_size)
            nll = toks.mean_nll()
            logs[f"{name}_text_loss"] = entry(nll.mean(), by_index([{"avg_loss": float(v)} for v in nll]))
    forget = sets.get("forget") or []
    if forget and all("target_words" in r for r in forget):
        enc = [fmt.row(r) for r in forget]
        toks = row_tokens(model, enc, tokenizer.pad_token_id, batch_size)
        labels = [(np.array(e["span_kind"])[np.array(e["labels"]) != -100] == 2).astype(int) for e in enc]
        logs["span_auroc_nll"] = entry(metrics.span_auroc(toks.nll, labels))
        logs["span_ap_nll"] = entry(metrics.span_average_precision(toks.nll, labels))
    return logs


def evaluate_benchmark(model, tokenizer, fmt: Formatter, data: BenchmarkData, bcfg: BenchmarkConfig,
                       retain_ref: RetainReference | None = None) -> dict:
    kw = {"batch_size": bcfg.eval_batch_size, "max_new_tokens": new_tokens(bcfg)}
    if data.name == "tofu":
        return evaluate_tofu(model, tokenizer, fmt, data.eval_sets, retain_ref=retain_ref, **kw)
    if data.name == "rwku":
        return evaluate_rwku(model, tokenizer, fmt, data.eval_sets, **kw)
    return evaluate_jsonl(model, tokenizer, fmt, data.eval_sets, **kw)


def retain_reference(bcfg: BenchmarkConfig) -> RetainReference | None:
    if not bcfg.retain_logs:
        return None
    try:
        return RetainReference.load(bcfg.retain_logs)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"--retain-logs: {exc}") from None


# --------------------------------------------------------------------------- unlearning


def encode_training(fmt: Formatter, rows: list[dict], name: str = "forget") -> list[dict]:
    """Encoded rows, always with ``span_kind`` (all answer tokens OUTSIDE when a row has no target
    words); a row whose answer ``max_length`` cuts away entirely is a :class:`DataError`."""
    encoded = [fmt.row({**r, "target_words": r.get("target_words") or []}) for r in rows]
    for i, row in enumerate(encoded):
        if all(label == -100 for label in row["labels"]):
            raise DataError(f"{name} row {i}: the answer is fully truncated by max_length {fmt.max_length}; "
                            "raise --benchmark.max_length")
    return encoded


def metric_value(summary: dict, key: str) -> float | None:
    """``key`` from a summary; a leading '-' negates it (so that larger is always better)."""
    sign = -1.0 if key.startswith("-") else 1.0
    value = summary.get(key.lstrip("-"))
    return None if value is None else sign * float(value)


SAMPLE_LOGS = ("forget_Q_A_ROUGE", "forget_FB", "forget_QA", "forget_AA")  # the first one present is sampled


def forget_samples(logs: dict, n: int = 5) -> list[dict]:
    """The first ``n`` forget generations of the evaluation logs (prompt, answer, generation)."""
    for key in SAMPLE_LOGS:
        rows = (logs.get(key) or {}).get("value_by_index") or {}
        if rows:
            return [{"question": r.get("input", ""), "answer": r.get("ground_truth", ""),
                     "generation": r.get("generation", "")} for _, r in sorted(rows.items(), key=lambda kv: int(kv[0]))[:n]]
    return []


def run_method_real(name: str, cfg: ExperimentConfig, data: BenchmarkData, retain_ref, fmt: Formatter,
                    forget_enc: list[dict], retain_enc: list[dict], train_cfg, per_epoch: int,
                    run_dir: Path, ctx: DistContext = SINGLE) -> dict:
    """Unlearn with one method; evaluate at the end (and every epoch); write logs, the model, the
    report's per-token scores and, last, ``metrics.json`` (which marks the method finished).
    Distributed: every rank trains its shards and evaluates its share of the rows (inside
    :func:`~atwu_fast.distributed.collective_eval`); rank 0 writes."""
    from .eval.synthetic import span_alignment
    from .methods import METHODS
    from .trainer import Unlearner
    from .unlearn import method_token_weights

    bcfg = cfg.benchmark
    log_name = LOG_NAMES[bcfg.name]
    method = METHODS[name]
    params = getattr(cfg, method.params_section)
    loaded: dict = {}

    def load():
        model, tokenizer = load_model(bcfg)
        loaded.setdefault("tokenizer", tokenizer)
        return model

    # LoRA, 8-bit optimisers, checkpointing, attention kernel (the weights keep benchmark.dtype);
    # NPO's reference is the adapter-disabled base with LoRA, else a second copy.
    efficiency = dataclasses.replace(cfg.efficiency, dtype=bcfg.dtype)
    model, reference, lora = build_unlearn_model(load, efficiency, method.needs_reference)
    tokenizer = loaded["tokenizer"]
    state = {"best": None, "history": []}
    best_file = run_dir / "best" / "best.json"
    if cfg.resume and bcfg.keep_best_by and best_file.is_file():  # a resumed run keeps the best so far
        raw = json.loads(best_file.read_text()).get(bcfg.keep_best_by)
        if raw is not None:
            state["best"] = metric_value({bcfg.keep_best_by.lstrip("-"): raw}, bcfg.keep_best_by)
    state["best"] = ctx.decide(state["best"])
    say = print if ctx.is_main else (lambda *a, **k: None)
    if bcfg.eval_before:
        logs = evaluate_benchmark(model, tokenizer, fmt, data, bcfg, retain_ref)
        if ctx.is_main:
            save_logs(run_dir / "epoch_0", logs, log_name)

    unlearner = Unlearner(model, method, params, train_cfg, forget_enc, retain_enc, tokenizer.pad_token_id,
                          reference=reference, log=say, optim=cfg.efficiency.optim, dist=ctx,
                          parallel=cfg.efficiency.parallel, packing=cfg.efficiency.packing)
    base = forget_token_scores(model, forget_enc, tokenizer.pad_token_id, bcfg.eval_batch_size)
    metrics_log = progress.MetricsLogger(run_dir / "metrics.jsonl" if ctx.is_main else None, name,
                                         run_dir.parent / "tensorboard" / name
                                         if cfg.log.tensorboard and ctx.is_main else None)

    def save_model(directory: Path) -> None:
        weights = full_state_dict(model) if sharded_root(model) is not None else None  # every rank gathers
        if ctx.is_main:
            save_unlearned(model, lora, directory, cfg.efficiency.save_merged, state_dict=weights)
            tokenizer.save_pretrained(directory)

    def on_eval(step: int) -> None:
        logs = evaluate_benchmark(model, tokenizer, fmt, data, bcfg, retain_ref)
        summary = summarize(logs)
        epoch = math.ceil(step / per_epoch)
        state["history"].append({"step": step, "epoch": epoch, **summary})
        if bcfg.eval_every_epoch and ctx.is_main:
            save_logs(run_dir / f"epoch_{epoch}", logs, log_name)
        state["last"] = logs
        if bcfg.keep_best_by:  # the gathered summary is the same on every rank
            value = metric_value(summary, bcfg.keep_best_by)
            if value is not None and (state["best"] is None or value > state["best"]):
                state["best"] = value
                save_model(run_dir / "best")
                if ctx.is_main:
                    atomic_write_json(run_dir / "best" / "best.json", {
                        "step": step, "epoch": epoch, bcfg.keep_best_by: summary.get(bcfg.keep_best_by.lstrip("-"))})
        say(f"  step {step} (epoch {epoch}): " + ", ".join(
            f"{k} {v:.4g}" for k, v in summary.items() if isinstance(v, (int, float))), flush=True)

    start = time.perf_counter()
    try:
        result = unlearner.run(per_epoch if bcfg.eval_every_epoch else 0, on_eval, metrics_log.log,
                               checkpoint_dir=run_dir.parent / "checkpoints" / name, resume=cfg.resume)
    finally:
        metrics_log.close()
    seconds = time.perf_counter() - start
    if state.get("last") is None:  # resumed from the final step's checkpoint: evaluate once more
        on_eval(train_cfg.steps)
    logs = state["last"]
    final = forget_token_scores(model, forget_enc, tokenizer.pad_token_id, bcfg.eval_batch_size,
                                lambda view: method_token_weights(method, unlearner.params, unlearner.scorer, view))
    if any(r.get("target_words") for r in data.forget) and final.weights is not None:
        for key, value in span_alignment(final.weights, final.span_kind).items():
            logs[key] = entry(value)
    save_model(run_dir / "model")
    metrics = {**summarize(logs), "train_seconds": seconds}
    if not ctx.is_main:
        return metrics
    save_logs(run_dir, logs, log_name)
    atomic_write_json(run_dir / "history.json", {"steps": result.history, "evals": state["history"]})
    atomic_write_json(run_dir / "samples.json", forget_samples(logs))
    save_token_scores(run_dir, method, tokenizer, data.forget, forget_enc, final, base)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def run_real(cfg: ExperimentConfig) -> int:
    """``unlearn --benchmark tofu|rwku|jsonl``: unlearn a real model and evaluate it (one process, or
    every rank of ``torchrun`` / ``accelerate launch``: data-parallel training, collective evaluation,
    rank 0 writes)."""
    from .unlearn import quiet_libraries, resolve_engine, warn_fixed_settings

    bcfg = cfg.benchmark
    out_dir = Path(cfg.output_dir or f"runs/{bcfg.name}-{'+'.join(cfg.method_list())}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.resume:
        fail(f"output directory {out_dir} is not empty; choose another --output-dir (or --resume)")
    if bcfg.keep_best_by and not bcfg.eval_every_epoch:
        fail("--benchmark.keep_best_by needs --benchmark.eval_every_epoch true")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_from_env(cuda=uses_cuda(bcfg.device))
    if ctx.enabled and not cfg.output_dir:
        fail("a distributed run needs an explicit --output-dir (the same on every rank)")
    cfg.efficiency.parallel = resolve_engine(cfg, ctx.world)
    say = print if ctx.is_main else (lambda *a, **k: None)
    if ctx.is_main:
        warn_fixed_settings(cfg)
    quiet_libraries()
    progress.configure(cfg.log.progress if ctx.is_main else "off")
    try:
        data = load_benchmark(bcfg)
        retain_ref = retain_reference(bcfg)
        tokenizer = load_tokenizer(bcfg)  # the model itself is loaded only once the data is valid
        fmt = formatter(tokenizer, bcfg)
        forget_enc, retain_enc = encode_training(fmt, data.forget), encode_training(fmt, data.retain, "retain")
    except (DataError, ValueError) as exc:
        fail(str(exc))
    if not retain_enc:
        fail(f"{bcfg.name}: no retain rows (RWKU uses the next K targets' texts; lower --targets)")
    say(f"{bcfg.name}: forget {len(forget_enc)} rows, retain {len(retain_enc)} rows; model {bcfg.model}", flush=True)
    train_cfg = cfg.train
    per_epoch = math.ceil(len(forget_enc) / (train_cfg.forget_batch_size * train_cfg.grad_accum))
    if bcfg.epochs:
        train_cfg = dataclasses.replace(train_cfg, steps=bcfg.epochs * per_epoch)
    try:  # decided before any rank can write, so every rank skips the same methods
        finished = {name: finished_metrics(out_dir / name) for name in cfg.method_list()} if cfg.resume else {}
    except ValueError as exc:
        fail(str(exc))
    finished = ctx.decide(finished)
    results = {}
    with collective_eval(ctx):
        for name in cfg.method_list():
            if finished.get(name) is not None:
                results[name] = finished[name]
                say(f"{name}: already finished, kept", flush=True)
                continue
            try:
                results[name] = run_method_real(name, cfg, data, retain_ref, fmt, forget_enc, retain_enc, train_cfg,
                                                per_epoch, out_dir / name, ctx)
            except DivergenceError as exc:
                say(f"error: {name} diverged: {exc}; the last good checkpoint is in {out_dir / 'checkpoints' / name}",
                    file=sys.stderr)
                return 3  # every rank sees the same global loss
            if ctx.is_main:
                shutil.rmtree(out_dir / "checkpoints" / name, ignore_errors=True)
                with contextlib.suppress(OSError):  # the checkpoints folder itself, once no method has one
                    (out_dir / "checkpoints").rmdir()
    if not ctx.is_main:
        shutdown(ctx)
        return 0
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    atomic_write_text(out_dir / "results.md", results_table(results, columns_for(bcfg.name, results)) + "\n")
    for name, res in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, (int, float))))
    if cfg.log.report:
        from .report_html import write_outputs

        print(f"report: {write_outputs(out_dir)['report'].resolve().as_uri()}")
    print(f"results written to {out_dir}")
    shutdown(ctx)
    return 0
