"""The one driver of every unlearning run: benchmark -> models -> per method: train -> evaluate -> write
-> report. The benchmark is a :class:`~atwu_fast.suites.base.Suite` (the embedded one, TOFU, RWKU or
JSONL); everything here is the same for all of them, on one process or on every rank of ``torchrun`` /
``accelerate launch`` (data-parallel training, collective evaluation, rank 0 writes). The run's
:class:`~atwu_fast.model.distributed.DistContext` (``Run.ctx``) is passed to every evaluation call
(``suite.evaluate``, ``forget_token_view``): with several ranks each evaluates its share of the rows
and every rank gets all results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from ..config import ConfigError
from ..config.args import fail
from ..data.io import atomic_write_json, atomic_write_text
from ..data.readers import DataError
from ..eval.logs import RetainReference
from ..eval.spans import ForgetTokenView, forget_token_view, method_alignment, span_alignment
from ..methods import METHODS, get_method
from ..model.distributed import (
    SINGLE,
    DistContext,
    full_state_dict,
    init_from_env,
    parallel_engine,
    sharded_root,
    shutdown,
)
from ..model.loading import build_unlearn_model, quiet_libraries, save_unlearned
from ..model.probe import exact_packing
from ..report import progress
from ..report.html import write_outputs
from ..report.tables import results_table
from ..report.token_scores import save_token_scores
from ..suites import Suite, make_suite
from ..suites.base import Evaluation
from ..train.trainer import DivergenceError, Unlearner
from .outputs import METRICS_FILE, REFERENCE_FILE, finished_metrics, metric_value
from .resolve import Resolved, annotated_yaml, resolve

RETAIN_MODEL, TARGET_MODEL = "retain model", "target model"


@dataclass
class Run:
    """What every method of one run shares."""

    cfg: object  # the ExperimentConfig
    suite: Suite
    out_dir: Path
    ctx: DistContext = SINGLE
    retain: Optional[RetainReference] = None  # the forget-quality reference
    quiet: bool = False  # no progress lines (a study running many methods)
    resolved: Optional[Resolved] = None  # the method's values and their sources (config.yaml)

    def log(self, message: str) -> None:
        if self.ctx.is_main and not self.quiet:
            print(message, flush=True)


def resolve_engine(cfg, world: int = 1) -> str:
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


def warn_fixed_settings(cfg) -> None:
    """One stderr line per method variant that overrides a section value the user set."""
    for name in cfg.method_list():
        method = get_method(name)
        ignored = method.ignored_settings(method.sections(cfg))
        if ignored:
            print(f"note: {name} fixes {', '.join(ignored)}; use method {method.params_section} to set them freely",
                  file=sys.stderr)


# --------------------------------------------------------------------------- before the methods


def prepare(suite: Suite, ctx: DistContext, log: Callable[[str], None]) -> None:
    """Load the suite's data and models: rank 0 first (it may train and cache models), then the
    other ranks from the cache. Bad data is a one-line error before any model is loaded."""
    def load(say: Callable[[str], None]) -> None:
        try:
            suite.load_data(say)
        except (DataError, ValueError) as exc:
            fail(str(exc))
        suite.prepare_models(say)

    if ctx.is_main:
        load(log)
        ctx.barrier()
    else:
        ctx.barrier()
        load(lambda m: None)


def rankers(run: Run, model) -> dict:
    """Span alignment of the training-free token rankers on ``model`` (every method whose weights are a
    function of the NLL, and 1 − p)."""
    suite = run.suite
    view = forget_token_view(model, suite.forget, suite.tokenizer.pad_token_id, suite.eval_batch_size, ctx=run.ctx)
    out = {}
    for name, method in METHODS.items():
        if method.token_weights is not None:
            params = method.params(method.sections(run.cfg))
            out[f"{name} weights (target)"] = span_alignment(method.token_weights(view.nll, params), view.span_kind)
    out["1 - p (target)"] = span_alignment(1 - torch.exp(-view.nll), view.span_kind)
    return out


def reference_rows(run: Run) -> dict:
    """Evaluate the suite's reference models (the retain model first: it is the forget-quality reference
    of the others) and rank the forget tokens with the training-free rankers on the target model."""
    suite, rows, ranks = run.suite, {}, {}
    retain = suite.retain_reference()
    ratios = None
    for name, load in suite.reference_models().items():
        model = load()
        evaluation = suite.evaluate(model, retain, ctx=run.ctx)
        if name == RETAIN_MODEL:
            evaluation.metrics["forget_quality"] = 1.0
            retain = evaluation.retain_reference
            ratios = retain.forget_truth_ratio
        rows[name] = evaluation.metrics
        if run.ctx.is_main:
            suite.write_logs(run.out_dir / "reference" / name, evaluation)
        if name == TARGET_MODEL and suite.has_spans:
            ranks = rankers(run, model)
    if suite.has_spans and not ranks:
        ranks = rankers(run, suite.load_target())
    run.retain = retain
    reference = {"benchmark": suite.name, "columns": suite.columns, "models": rows, "rankers": ranks}
    if ratios is not None:
        reference["retain_forget_truth_ratios"] = np.asarray(ratios).tolist()
    return reference


def restore_reference(run: Run, reference: dict) -> None:
    """A resumed run's forget-quality reference: the retain model's ratios it saved, else the suite's own."""
    ratios = reference.get("retain_forget_truth_ratios")
    run.retain = (RetainReference(np.asarray(ratios), source=RETAIN_MODEL) if ratios is not None
                  else run.suite.retain_reference())


# --------------------------------------------------------------------------- one method


@dataclass
class MethodState:
    view: Optional[ForgetTokenView] = None  # the latest forget-token view (weights, NLL) ...
    view_step: int = -1  # ... and the step it was taken at
    evaluation: Optional[Evaluation] = None  # the latest full evaluation ...
    eval_step: int = -1
    evals: list[dict] = field(default_factory=list)  # every full evaluation's metrics, by step
    best: Optional[float] = None  # the kept checkpoint's keep_best_by value


def run_method(name: str, run: Run) -> dict:
    """Unlearn with one method, evaluate (at checkpoints and at the end), and write ``<out>/<name>/``
    (``metrics.json`` last). Training checkpoints go to ``<out>/checkpoints/<name>/``; with
    ``cfg.resume`` the run continues from the latest one. Returns the method's metrics."""
    cfg, suite, ctx = run.cfg, run.suite, run.ctx
    method = get_method(name)
    train_cfg = suite.train_config(cfg.train)
    model, reference, lora = build_unlearn_model(suite.load_target, suite.efficiency(cfg.efficiency),
                                                 method.needs_reference)
    pad_id, batch_size = suite.tokenizer.pad_token_id, suite.eval_batch_size
    method_dir = run.out_dir / name
    unlearner = Unlearner(model, method, method.sections(cfg), train_cfg, suite.forget, suite.retain, pad_id,
                          reference=reference, log=run.log, optim=cfg.efficiency.optim, dist=ctx,
                          parallel=cfg.efficiency.parallel, packing=exact_packing(model, cfg.efficiency.packing),
                          forget_source=suite.forget_rows, encode=suite.encode)
    base = forget_token_view(model, suite.forget, pad_id, batch_size, ctx=ctx)
    state = MethodState()
    keep = suite.keep_best_by
    best_file = method_dir / "best" / "best.json"
    if cfg.resume and keep and best_file.is_file():  # a resumed run keeps the best so far
        raw = json.loads(best_file.read_text()).get(keep)
        state.best = None if raw is None else metric_value({keep.lstrip("-"): raw}, keep)
    state.best = ctx.decide(state.best)
    metrics_log = progress.MetricsLogger(method_dir / "metrics.jsonl" if ctx.is_main else None, name,
                                         run.out_dir / "tensorboard" / name if cfg.log.tensorboard and ctx.is_main
                                         else None)
    train_bar = progress.bar(total=train_cfg.steps, desc=f"unlearn {name}", unit="step", leave=True)

    def save_model(directory: Path) -> None:
        weights = full_state_dict(model) if sharded_root(model) is not None else None  # every rank gathers
        if ctx.is_main:
            save_unlearned(model, lora, directory, cfg.efficiency.save_merged, state_dict=weights)
            suite.tokenizer.save_pretrained(directory)

    def on_step(stats: dict) -> None:
        metrics_log.log(stats)
        train_bar.update(1)
        train_bar.set_postfix({k: f"{stats[k]:.3g}" for k in ("loss", "forget_nll", "score_frac") if k in stats},
                              refresh=False)

    def evaluate(step: int) -> None:
        evaluation = suite.evaluate(model, run.retain, ctx=ctx)
        state.evaluation, state.eval_step = evaluation, step
        epoch = suite.epoch(step)
        state.evals.append({"step": step, **({"epoch": epoch} if epoch is not None else {}), **evaluation.metrics})
        if suite.eval_every and ctx.is_main:
            suite.write_logs(method_dir / (f"epoch_{epoch}" if epoch is not None else f"step_{step}"), evaluation)
        value = metric_value(evaluation.metrics, keep) if keep else None
        if value is not None and (state.best is None or value > state.best):  # the same on every rank
            state.best = value
            save_model(method_dir / "best")
            if ctx.is_main:
                atomic_write_json(best_file, {"step": step, "epoch": epoch, keep: evaluation.metrics.get(keep.lstrip("-"))})
        if suite.evaluates_at_checkpoints:
            run.log(f"  step {step}{f' (epoch {epoch})' if epoch is not None else ''}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in evaluation.metrics.items() if isinstance(v, (int, float))))

    def on_eval(step: int) -> Optional[dict]:
        """A checkpoint: span alignment of the method's weights (returned, kept by the trainer), and the
        full evaluation where the suite evaluates at checkpoints and after the last step."""
        state.view = forget_token_view(model, suite.forget, pad_id, batch_size, unlearner.token_weights, ctx=ctx)
        state.view_step = step
        alignment = None
        if suite.has_spans:
            alignment = {"step": step, **method_alignment(state.view, base)}
            metrics_log.log_scalars(step, alignment)
        if suite.evaluates_at_checkpoints or step == train_cfg.steps:
            evaluate(step)
        return alignment

    start = time.perf_counter()
    try:
        result = unlearner.run(suite.eval_every, on_eval, on_step, checkpoint_dir=run.out_dir / "checkpoints" / name,
                               resume=cfg.resume)
    finally:
        train_bar.close()
        metrics_log.close()
    train_seconds = time.perf_counter() - start
    if state.eval_step != train_cfg.steps:  # resumed from the final step's checkpoint: evaluate once more
        on_eval(train_cfg.steps)
    evaluation, checkpoints = state.evaluation, result.evaluations
    if checkpoints:
        evaluation.add({k: v for k, v in checkpoints[-1].items() if k != "step"})
        evaluation.metrics["span_auroc_avg"] = float(np.nanmean([c["span_auroc"] for c in checkpoints]))
        evaluation.metrics["span_ap_avg"] = float(np.nanmean([c["span_ap"] for c in checkpoints]))
    metrics = {**evaluation.metrics, "train_seconds": train_seconds}
    save_model(method_dir / "model")
    if not ctx.is_main:
        return metrics
    unlearner.hooks.save(method_dir)
    resolved = run.resolved or resolve(cfg, suite, name)
    atomic_write_text(method_dir / "config.yaml", annotated_yaml(resolved, f"{name} on {suite.name}: every option "
                                                                           "as this method ran"))
    suite.write_logs(method_dir, evaluation)
    atomic_write_json(method_dir / "history.json",
                      {"steps": result.history, "span_checkpoints": checkpoints, "evals": state.evals})
    atomic_write_json(method_dir / "samples.json", evaluation.samples)
    save_token_scores(method_dir, method, suite.tokenizer, suite.forget_rows, suite.forget, state.view, base,
                      suite.kind_names)
    atomic_write_json(method_dir / METRICS_FILE, metrics)  # last: marks the method finished
    return metrics


# --------------------------------------------------------------------------- the run


def output_dir(cfg, suite: Suite) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    label = "all" if cfg.methods == ["all"] else "+".join(cfg.method_list())
    return suite.default_output_dir(label, time.strftime("%Y%m%d-%H%M%S"))


def run(cfg, explicit: frozenset[str] = frozenset()) -> int:
    """The whole run; returns the exit code (0, or 3 when a method diverged). User errors exit 2.
    ``explicit``: the dotted keys the user set, which the methods' tuned values never override."""
    t0 = time.perf_counter()
    suite = make_suite(cfg)
    methods = cfg.method_list()
    if cfg.print_config:
        for name in methods:
            print(annotated_yaml(resolve(cfg, suite, name, explicit), f"{name} on {suite.name}"))
        return 0
    out_dir = output_dir(cfg, suite)
    if not cfg.resume and out_dir.exists() and any(out_dir.iterdir()):
        fail(f"output directory {out_dir} is not empty; choose another --output-dir (or --resume)")
    if cfg.benchmark.keep_best_by and not cfg.benchmark.eval_every_epoch:
        fail("--benchmark.keep_best_by needs --benchmark.eval_every_epoch true")
    try:  # read before any rank can write; decided by rank 0 below, so every rank skips the same methods
        finished = {name: finished_metrics(out_dir / name) for name in methods} if cfg.resume else {}
    except ValueError as exc:
        fail(str(exc))
    if cfg.resume and not (cfg.output_dir and (out_dir / REFERENCE_FILE).is_file()):
        fail(f"--resume needs the --output-dir of an interrupted run; {out_dir} holds none")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_from_env(cuda=suite.uses_cuda())  # CPU models (the embedded ones): gloo
    if ctx.enabled and not cfg.output_dir:
        fail("a distributed run needs an explicit --output-dir (the same on every rank)")
    cfg.efficiency.parallel = resolve_engine(cfg, ctx.world)
    if ctx.is_main:
        warn_fixed_settings(cfg)
    quiet_libraries()
    progress.configure(cfg.log.progress if ctx.is_main else "off")
    finished = ctx.decide({name: metrics for name, metrics in finished.items() if metrics is not None})
    this = Run(cfg, suite, out_dir, ctx)
    prepare(suite, ctx, this.log)
    results: dict[str, dict] = {}
    if cfg.resume:
        reference = json.loads((out_dir / REFERENCE_FILE).read_text())
        restore_reference(this, reference)
    else:
        reference = reference_rows(this)
        if ctx.is_main:
            atomic_write_json(out_dir / REFERENCE_FILE, reference)
    for name in methods:
        if name in finished:
            results[name] = finished[name]
            this.log(f"{name}: already finished, kept")
            continue
        resolved = resolve(cfg, suite, name, explicit)
        method_cfg = resolved.cfg
        this.log(f"unlearning with {name} ({suite.train_config(method_cfg.train).steps} steps, "
                 f"lr {method_cfg.train.lr:g}{', tuned' if resolved.tuned else ''}) ...")
        try:
            results[name] = run_method(name, dataclasses.replace(this, cfg=method_cfg, resolved=resolved))
        except DivergenceError as exc:
            if ctx.is_main:
                print(f"error: {name} diverged: {exc}; the last good checkpoint is in "
                      f"{out_dir / 'checkpoints' / name}", file=sys.stderr)
            return 3  # every rank sees the same global loss
        this.log(f"  done in {results[name]['train_seconds']:.0f}s")
        if ctx.is_main:
            shutil.rmtree(out_dir / "checkpoints" / name, ignore_errors=True)
            with contextlib.suppress(OSError):  # the checkpoints folder itself, once no method has one
                (out_dir / "checkpoints").rmdir()
    if not ctx.is_main:
        shutdown(ctx)
        return 0
    write_results(this, reference, results, t0)
    shutdown(ctx)
    return 0


def write_results(run: Run, reference: dict, results: dict[str, dict], t0: float) -> None:
    """results.json, config.yaml, results.md, the report; the table on stdout."""
    out_dir = run.out_dir
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(run.cfg), sort_keys=False))
    rows = {**reference["models"], **results}
    table = results_table(rows, run.suite.columns_for(rows))
    atomic_write_text(out_dir / "results.md", table + "\n")
    if run.cfg.log.report:
        written = write_outputs(out_dir)
        print(f"report: {written['report'].resolve().as_uri()}")
    print()
    print(table)
    print()
    for name, ranks in reference["rankers"].items():
        print(f"span AUROC of {name}: unique {ranks['span_auroc']:.3f}, all facts {ranks['span_auroc_all']:.3f}")
    print(f"\nresults written to {out_dir}  (total {time.perf_counter() - t0:.0f}s)")
