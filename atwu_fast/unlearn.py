"""``python -m atwu_fast.unlearn``: unlearn the forget split and evaluate.

With no arguments this runs the complete embedded experiment on CPU: synthetic fictitious-authors
data, a locally trained tokenizer, a tiny target model and a retain-only reference model (both
cached), ATWU unlearning (``atwu_logfit``, the default method), and the evaluation table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from . import progress
from .cli import fail, parse_config
from .config import ATWUParams, ExperimentConfig
from .configtools import ConfigError
from .distributed import (
    SINGLE,
    DistContext,
    collective_eval,
    full_state_dict,
    init_from_env,
    parallel_engine,
    sharded_root,
    shutdown,
)
from .embedded import Benchmark, prepare
from .eval.synthetic import evaluate_model, evaluation_splits, forget_tokens, span_alignment
from .io import atomic_dir, atomic_write_json, atomic_write_text
from .loading import build_unlearn_model, save_unlearned
from .methods import METHODS, Method, ignored_settings
from .report import results_table
from .report_html import token_score_rows, token_scores_doc, write_outputs
from .resume import METRICS_FILE, finished_metrics
from .trainer import DivergenceError, Unlearner

SHORTCUTS = {"--method": "method", "--methods": "methods", "--output-dir": "output_dir", "--seed": "train.seed"}
SHORTCUTS.update({"--benchmark": "benchmark.name", "--split": "benchmark.split", "--model": "benchmark.model",
                  "--targets": "benchmark.targets", "--retain-logs": "benchmark.retain_logs"})


def method_token_weights(method: Method, params, scorer, tokens) -> torch.Tensor | None:
    """The weights a method puts on each forget token (ATWU: learned scores), or None."""
    if method.needs_scorer:
        return scorer(tokens.hidden(params.score_position)).detach()
    if method.token_weights is not None:
        return method.token_weights(tokens.nll, params)
    return None


def run_method(name: str, cfg: ExperimentConfig, bench: Benchmark, retain_r: np.ndarray, out_dir: Path,
               log, ctx: DistContext = SINGLE) -> dict:
    """Unlearn with one method, evaluate, and write ``<out_dir>/<name>/`` (atomically). Training
    checkpoints go to ``<out_dir>/checkpoints/<name>/`` and are removed once the method is done;
    with ``cfg.resume`` the run continues from the latest one. Distributed: every rank trains its
    shards and evaluates its share of the rows (call inside :func:`collective_eval`); rank 0 writes."""
    method = METHODS[name]
    params = getattr(cfg, method.params_section)
    model, reference, lora = build_unlearn_model(lambda: bench.load_model("target"), cfg.efficiency,
                                                 method.needs_reference)
    tok = bench.tokenizer
    unlearner = Unlearner(model, method, params, cfg.train, bench.encoded["forget"], bench.encoded["retain"],
                          tok.pad_token_id, reference=reference, log=log, optim=cfg.efficiency.optim, dist=ctx,
                          parallel=cfg.efficiency.parallel, packing=cfg.efficiency.packing)
    checkpoint_dir = out_dir / "checkpoints" / name
    base_nll = forget_tokens(model, bench.encoded["forget"], tok.pad_token_id, cfg.eval.batch_size).nll
    last: dict = {}  # the final evaluation's forget tokens and weights, for token_scores.json
    live = out_dir / name / "metrics.jsonl"  # tail-able during training; copied into the final method dir
    metrics_log = progress.MetricsLogger(live if ctx.is_main else None, name,
                                         out_dir / "tensorboard" / name if cfg.log.tensorboard and ctx.is_main else None)
    train_bar = progress.bar(total=cfg.train.steps, desc=f"unlearn {name}", unit="step", leave=True)

    def on_step(stats: dict) -> None:
        metrics_log.log(stats)
        train_bar.update(1)
        train_bar.set_postfix({k: f"{stats[k]:.3g}" for k in ("loss", "forget_nll", "score_frac") if k in stats},
                              refresh=False)

    def on_eval(step: int) -> dict | None:
        tokens = forget_tokens(model, bench.encoded["forget"], tok.pad_token_id, cfg.eval.batch_size)
        weights = method_token_weights(method, unlearner.params, unlearner.scorer, tokens)
        last.update(tokens=tokens, weights=weights)
        if weights is None:
            return None
        alignment = {"step": step, **span_alignment(weights, tokens.span_kind)}
        metrics_log.log_scalars(step, alignment)
        return alignment

    start = time.perf_counter()
    try:
        result = unlearner.run(cfg.eval.eval_every, on_eval, on_step, checkpoint_dir=checkpoint_dir,
                               resume=cfg.resume)
    finally:
        train_bar.close()
        metrics_log.close()
    train_seconds = time.perf_counter() - start
    checkpoints = result.evaluations
    evaluation = evaluate_model(model, tok, evaluation_splits(bench.splits, cfg.eval.retain_authors), cfg.tokenizer.max_length, cfg.eval.batch_size,
                                cfg.eval.max_new_tokens, cfg.eval.generate, retain_forget_truth_ratios=retain_r)
    metrics = dict(evaluation.metrics)
    if checkpoints:
        metrics.update({k: v for k, v in checkpoints[-1].items() if k != "step"})
        metrics["span_auroc_avg"] = float(np.nanmean([c["span_auroc"] for c in checkpoints]))
        metrics["span_ap_avg"] = float(np.nanmean([c["span_ap"] for c in checkpoints]))
    else:
        metrics.update(span_auroc=None, span_ap=None, span_auroc_avg=None)
    metrics["train_seconds"] = train_seconds
    weights = full_state_dict(model) if sharded_root(model) is not None else None  # every rank gathers
    if not ctx.is_main:
        return metrics

    def save(d: Path) -> None:
        save_unlearned(model, lora, d / "model", cfg.efficiency.save_merged, state_dict=weights)
        tok.save_pretrained(d / "model")
        if result.scorer is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in result.scorer.state_dict().items()},
                      str(d / "scorer.safetensors"))
        atomic_write_json(d / "history.json", {"steps": result.history, "span_checkpoints": checkpoints})
        atomic_write_json(d / "samples.json", evaluation.samples)
        atomic_write_json(d / METRICS_FILE, metrics)
        if live.is_file():
            shutil.copyfile(live, d / "metrics.jsonl")
        tokens = last.get("tokens")
        if tokens is not None:
            rows = token_score_rows(tok, bench.splits["forget"], bench.encoded["forget"], tokens.seq, tokens.nll,
                                    tokens.span_kind, last.get("weights"), base_nll)
            atomic_write_json(d / "token_scores.json", token_scores_doc(method, rows))

    atomic_dir(out_dir / name, save)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # the checkpoints folder itself, once no method has one
        checkpoint_dir.parent.rmdir()
    return metrics


def reference_rows(cfg: ExperimentConfig, bench: Benchmark, log) -> dict:
    """Evaluate the retain and target models; rank forget tokens with WGA/SatImp weights on the target."""
    kw = dict(max_length=cfg.tokenizer.max_length, batch_size=cfg.eval.batch_size,
              max_new_tokens=cfg.eval.max_new_tokens, generate=cfg.eval.generate)
    retain_model = bench.load_model("retain")
    splits = evaluation_splits(bench.splits, cfg.eval.retain_authors)
    retain_eval = evaluate_model(retain_model, bench.tokenizer, splits, **kw)
    retain_eval.metrics["forget_quality"] = 1.0
    target = bench.load_model("target")
    target_eval = evaluate_model(target, bench.tokenizer, splits, retain_forget_truth_ratios=retain_eval.forget_truth_ratios, **kw)
    tokens = forget_tokens(target, bench.encoded["forget"], bench.tokenizer.pad_token_id, cfg.eval.batch_size)
    rankers = {}
    for name in ("wga", "satimp"):
        method = METHODS[name]
        rankers[f"{name} weights (target)"] = span_alignment(method.token_weights(tokens.nll, getattr(cfg, name)),
                                                              tokens.span_kind)
    rankers["1 - p (target)"] = span_alignment(1 - torch.exp(-tokens.nll), tokens.span_kind)
    rows = {"retain model": retain_eval.metrics, "target model": target_eval.metrics}
    return {"models": rows, "rankers": rankers,
            "retain_forget_truth_ratios": retain_eval.forget_truth_ratios.tolist()}


def quiet_libraries() -> None:
    """No per-file progress bars from transformers' weight loading / saving."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def resolve_engine(cfg: ExperimentConfig, world: int = 1) -> str:
    """The data-parallel engine this run uses (``auto`` resolved), checked against the other options
    and the number of ranks (every rank needs a forget and a retain row of each micro-batch)."""
    engine = parallel_engine(cfg.efficiency.parallel)
    try:
        cfg.efficiency.validate(engine)
    except ConfigError as exc:
        fail(str(exc))
    smallest = min(cfg.train.forget_batch_size, cfg.train.retain_batch_size)
    if smallest < world:
        fail(f"{world} ranks need train.forget_batch_size and train.retain_batch_size >= {world} (global batches)")
    return engine


def warn_fixed_settings(cfg: ExperimentConfig) -> None:
    """One stderr line per ATWU variant that overrides an ``--atwu.*`` value the user set."""
    for name in cfg.method_list():
        ignored = ignored_settings(name, cfg.atwu, ATWUParams())
        if ignored:
            print(f"note: {name} fixes {', '.join(ignored)}; use method atwu to set them freely", file=sys.stderr)


def default_output_dir(cfg: ExperimentConfig) -> Path:
    label = "all" if cfg.methods == ["all"] else "+".join(cfg.method_list())
    return Path("runs") / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExperimentConfig, argv, prog="python -m atwu_fast.unlearn",
                       description=__doc__.splitlines()[0], shortcuts=SHORTCUTS)
    if cfg.benchmark.name != "synthetic":
        from .real import run_real

        return run_real(cfg)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    if cfg.resume:
        if not cfg.output_dir or not (out_dir / "reference.json").is_file():
            fail(f"--resume needs the --output-dir of an interrupted run; {out_dir} holds none")
    elif out_dir.exists() and any(out_dir.iterdir()):
        fail(f"output directory {out_dir} is not empty; choose another --output-dir (or --resume)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_from_env(cuda=False)  # the embedded models run on the CPU: gloo
    if ctx.enabled and not cfg.output_dir:
        fail("a distributed run needs an explicit --output-dir (the same on every rank)")
    cfg.efficiency.parallel = resolve_engine(cfg, ctx.world)
    if ctx.is_main:
        warn_fixed_settings(cfg)
    quiet_libraries()
    progress.configure(cfg.log.progress if ctx.is_main else "off")
    methods = cfg.method_list()
    try:  # decided before any rank can write, so every rank skips the same methods
        finished = {name: finished_metrics(out_dir / name) for name in methods} if cfg.resume else {}
    except ValueError as exc:
        fail(str(exc))
    finished = ctx.decide({name: metrics for name, metrics in finished.items() if metrics is not None})

    def log(message: str) -> None:
        if ctx.is_main:
            print(message, flush=True)

    t0 = time.perf_counter()
    if ctx.is_main:
        bench = prepare(cfg, log)
        ctx.barrier()  # the other ranks load the cached assets once they exist
    else:
        ctx.barrier()
        bench = prepare(cfg, None)
    log(f"data: {', '.join(f'{k} {len(v)}' for k, v in bench.splits.items())} QA pairs; "
        f"vocab {len(bench.tokenizer)}  ({time.perf_counter() - t0:.0f}s)")
    results: dict[str, dict] = {}
    with collective_eval(ctx):  # every rank evaluates its share of the rows; rank 0 writes
        if cfg.resume:
            reference = json.loads((out_dir / "reference.json").read_text())
        else:
            reference = reference_rows(cfg, bench, log)
            if ctx.is_main:
                atomic_write_json(out_dir / "reference.json", reference)
        retain_r = np.asarray(reference["retain_forget_truth_ratios"])
        for name in methods:
            if name in finished:
                results[name] = finished[name]
                log(f"{name}: already finished, kept")
                continue
            log(f"unlearning with {name} ({cfg.train.steps} steps, lr {cfg.train.lr:g}) ...")
            try:
                results[name] = run_method(name, cfg, bench, retain_r, out_dir, log, ctx)
            except DivergenceError as exc:
                if ctx.is_main:
                    print(f"error: {name} diverged: {exc}; the last good checkpoint is in "
                          f"{out_dir / 'checkpoints' / name}", file=sys.stderr)
                return 3  # every rank sees the same global loss
            log(f"  done in {results[name]['train_seconds']:.0f}s")
    if not ctx.is_main:
        shutdown(ctx)
        return 0
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    table = results_table({**reference["models"], **results})
    atomic_write_text(out_dir / "results.md", table + "\n")
    if cfg.log.report:
        written = write_outputs(out_dir)
        log(f"report: {written['report'].resolve().as_uri()}")
    print()
    print(table)
    print()
    for name, ranks in reference["rankers"].items():
        print(f"span AUROC of {name}: unique {ranks['span_auroc']:.3f}, all facts {ranks['span_auroc_all']:.3f}")
    print(f"\nresults written to {out_dir}  (total {time.perf_counter() - t0:.0f}s)")
    shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
