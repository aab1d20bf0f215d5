"""``python -m atwu_fast.unlearn``: unlearn the forget split and evaluate.

With no arguments this runs the complete embedded experiment on CPU: synthetic fictitious-authors
data, a locally trained tokenizer, a tiny target model and a retain-only reference model (both
cached), ATWU unlearning, and the evaluation table.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .cli import fail, parse_config
from .config import ExperimentConfig
from .embedded import Benchmark, prepare
from .eval.synthetic import evaluate_model, evaluation_splits, forget_tokens, span_alignment
from .io import atomic_dir, atomic_write_json, atomic_write_text
from .methods import METHODS, Method
from .report import results_table
from .trainer import Unlearner

SHORTCUTS = {"--method": "method", "--methods": "methods", "--output-dir": "output_dir", "--seed": "train.seed"}


def method_token_weights(method: Method, params, scorer, tokens) -> torch.Tensor | None:
    """The weights a method puts on each forget token (ATWU: learned scores), or None."""
    if method.needs_scorer:
        return scorer(tokens.hidden(params.score_position)).detach()
    if method.token_weights is not None:
        return method.token_weights(tokens.nll, params)
    return None


def run_method(name: str, cfg: ExperimentConfig, bench: Benchmark, retain_r: np.ndarray, out_dir: Path,
               log) -> dict:
    method = METHODS[name]
    params = getattr(cfg, method.params_section)
    model = bench.load_model("target")
    reference = bench.load_model("target").requires_grad_(False) if method.needs_reference else None
    tok = bench.tokenizer
    unlearner = Unlearner(model, method, params, cfg.train, bench.encoded["forget"], bench.encoded["retain"],
                          tok.pad_token_id, reference=reference, log=log)
    checkpoints: list[dict] = []

    def on_eval(step: int) -> None:
        tokens = forget_tokens(model, bench.encoded["forget"], tok.pad_token_id, cfg.eval.batch_size)
        weights = method_token_weights(method, unlearner.params, unlearner.scorer, tokens)
        if weights is not None:
            checkpoints.append({"step": step, **span_alignment(weights, tokens.span_kind)})

    start = time.perf_counter()
    result = unlearner.run(cfg.eval.eval_every, on_eval)
    train_seconds = time.perf_counter() - start
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

    def save(d: Path) -> None:
        model.save_pretrained(d / "model")
        tok.save_pretrained(d / "model")
        if result.scorer is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in result.scorer.state_dict().items()},
                      str(d / "scorer.safetensors"))
        atomic_write_json(d / "history.json", {"steps": result.history, "span_checkpoints": checkpoints})
        atomic_write_json(d / "samples.json", evaluation.samples)

    atomic_dir(out_dir / name, save)
    return metrics


def reference_rows(cfg: ExperimentConfig, bench: Benchmark, log) -> tuple[dict, np.ndarray]:
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
    return {"models": rows, "rankers": rankers}, retain_eval.forget_truth_ratios


def quiet_libraries() -> None:
    """No per-file progress bars from transformers' weight loading / saving."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def default_output_dir(cfg: ExperimentConfig) -> Path:
    label = "all" if cfg.methods == ["all"] else "+".join(cfg.method_list())
    return Path("runs") / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExperimentConfig, argv, prog="python -m atwu_fast.unlearn",
                       description=__doc__.splitlines()[0], shortcuts=SHORTCUTS)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"output directory {out_dir} is not empty; choose another --output-dir")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_libraries()
    methods = cfg.method_list()

    def log(message: str) -> None:
        print(message, flush=True)

    t0 = time.perf_counter()
    bench = prepare(cfg, log)
    log(f"data: {', '.join(f'{k} {len(v)}' for k, v in bench.splits.items())} QA pairs; "
        f"vocab {len(bench.tokenizer)}  ({time.perf_counter() - t0:.0f}s)")
    reference, retain_r = reference_rows(cfg, bench, log)
    results: dict[str, dict] = {}
    for name in methods:
        log(f"unlearning with {name} ({cfg.train.steps} steps, lr {cfg.train.lr:g}) ...")
        results[name] = run_method(name, cfg, bench, retain_r, out_dir, log)
        log(f"  done in {results[name]['train_seconds']:.0f}s")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_json(out_dir / "reference.json", reference)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    table = results_table({**reference["models"], **results})
    atomic_write_text(out_dir / "results.md", table + "\n")
    print()
    print(table)
    print()
    for name, ranks in reference["rankers"].items():
        print(f"span AUROC of {name}: unique {ranks['span_auroc']:.3f}, all facts {ranks['span_auroc_all']:.3f}")
    print(f"\nresults written to {out_dir}  (total {time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
