"""Every option of atwu-fast, with its default: the one source of defaults.

Sections map to command-line flags ``--<section>.<field>`` and to YAML keys. Methods read their
hyper-parameters from their own section (``atwu``, ``wga``, ...), so two methods can have
different defaults for a parameter of the same name (WGA's β = 1, ATWU's β = 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .configtools import ConfigError


def _h(text: str, default=None, factory=None):
    """A dataclass field with help text (shown by ``--help``)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------- data


@dataclass
class SyntheticConfig:
    """The embedded fictitious-authors benchmark (TOFU schema)."""

    seed: int = _h("generator seed (the data is a pure function of this section)", 0)
    n_forget_authors: int = _h("authors in the forget split (TOFU forget10 has 20)", 20)
    n_retain_authors: int = _h("authors in the retain split", 60)
    n_holdout_authors: int = _h("authors never trained on (MIA / holdout split)", 10)
    n_general: int = _h("general-knowledge QA pairs (utility split, trained on by both models)", 60)
    min_facts: int = _h("fewest facts per author", 5)
    max_facts: int = _h("most facts per author", 8)
    templates_per_fact: int = _h("question/answer phrasings per fact type", 3)
    unique_share: float = _h("probability that an author's fact is of an author-unique type "
                             "(invented titles, names) rather than a pooled one (cities, jobs)", 0.4)
    pool_scale: float = _h("size multiplier of the shared value pools (cities, jobs, genres)", 1.0)
    n_perturbed: int = _h("wrong answers per question for the truth ratio", 5)

    def validate(self) -> None:
        _check(self.n_forget_authors >= 1, "data.n_forget_authors must be >= 1")
        _check(self.n_retain_authors >= 1, "data.n_retain_authors must be >= 1")
        _check(self.n_holdout_authors >= 0 and self.n_general >= 0, "data sizes must be >= 0")
        _check(1 <= self.min_facts <= self.max_facts, "data.min_facts must be in [1, data.max_facts]")
        _check(self.templates_per_fact >= 1, "data.templates_per_fact must be >= 1")
        _check(0.0 <= self.unique_share <= 1.0, "data.unique_share must be in [0, 1]")
        _check(self.pool_scale > 0, "data.pool_scale must be > 0")
        _check(self.n_perturbed >= 1, "data.n_perturbed must be >= 1")


@dataclass
class TokenizerConfig:
    vocab_size: int = _h("byte-level BPE vocabulary size", 1024)
    max_length: int = _h("maximum tokens per encoded question+answer", 96)

    def validate(self) -> None:
        _check(self.vocab_size >= 300, "tokenizer.vocab_size must be >= 300 (256 bytes + specials)")
        _check(self.max_length >= 8, "tokenizer.max_length must be >= 8")


# --------------------------------------------------------------------------- models


@dataclass
class ModelConfig:
    """A small Llama-style decoder built from a transformers config."""

    hidden_size: int = _h("model width D", 128)
    num_layers: int = _h("decoder layers", 2)
    num_heads: int = _h("attention heads", 4)
    intermediate_size: int = _h("MLP width", 384)
    tie_embeddings: bool = _h("tie the LM head to the input embeddings", True)
    seed: int = _h("initialisation seed of the tiny models", 0)

    def validate(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "model.hidden_size must be divisible by model.num_heads")
        _check(self.num_layers >= 1, "model.num_layers must be >= 1")


@dataclass
class FinetuneConfig:
    """Fine-tuning the target (forget+retain+general) and retain (retain+general) models."""

    lr: float = _h("AdamW learning rate", 3e-3)
    batch_size: int = _h("QA pairs per step", 32)
    max_steps: int = _h("upper bound on steps", 1200)
    min_steps: int = _h("steps before early stopping may trigger", 200)
    target_loss: float = _h("stop once the running mean answer NLL is below this", 0.02)
    warmup_steps: int = _h("linear warm-up steps", 20)
    weight_decay: float = _h("AdamW weight decay", 0.0)

    def validate(self) -> None:
        _check(self.lr > 0 and self.batch_size >= 1 and self.max_steps >= 1, "pretrain: lr, batch_size, max_steps must be positive")


# --------------------------------------------------------------------------- unlearning


@dataclass
class TrainConfig:
    """The unlearning loop (shared by every method)."""

    lr: float = _h("model AdamW learning rate", 1e-3)
    steps: int = _h("optimiser steps", 60)
    forget_batch_size: int = _h("forget QA pairs per micro-batch", 16)
    retain_batch_size: int = _h("retain QA pairs per micro-batch", 16)
    grad_accum: int = _h("micro-batches per optimiser step", 1)
    warmup_steps: int = _h("linear warm-up steps", 0)
    lr_schedule: Literal["constant", "linear"] = _h("after warm-up: constant or linear decay to 0", "constant")
    weight_decay: float = _h("AdamW weight decay", 0.0)
    max_grad_norm: float = _h("gradient-norm clip (0 disables)", 1.0)
    loss_chunk_size: int = _h("tokens per chunk of the LM-head loss (bounds the chunk x V buffer)", 1024)
    fused_head: bool = _h("ATWU through the fused head (NLL, scores, loss and gradients in one pass)", True)
    seed: int = _h("seed of batching and any sampling during unlearning", 0)
    checkpoint_every: int = _h("write a resumable checkpoint every K steps (0: only at the end)", 0)
    abort_grad_norm: float = _h("stop the run if the gradient norm before clipping exceeds this (0: off)", 0.0)

    def validate(self) -> None:
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        _check(self.abort_grad_norm >= 0, "train.abort_grad_norm must be >= 0")
        _check(self.steps >= 1, "train.steps must be >= 1")
        _check(self.forget_batch_size >= 1 and self.retain_batch_size >= 1, "train batch sizes must be >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0")
        _check(self.loss_chunk_size >= 1, "train.loss_chunk_size must be >= 1")


@dataclass
class EfficiencyConfig:
    """Fitting one GPU: optimiser, LoRA, dtype, attention kernel, checkpointing (see docs/memory.md).

    ``python -m atwu_fast.plan`` predicts the peak GPU memory of a combination before a run.
    """

    optim: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = _h(
        "model optimiser: torch AdamW, or bitsandbytes 8-bit AdamW (paged: CUDA unified memory); "
        "the ATWU scorer stays an fp32 SGD", "adamw")
    lora_rank: int = _h("LoRA rank through peft (0: full fine-tuning)", 0)
    lora_alpha: float = _h("LoRA alpha (scaling alpha / rank)", 16.0)
    lora_dropout: float = _h("LoRA dropout", 0.0)
    lora_targets: list[str] = _h("modules that get LoRA adapters (names or suffixes)",
                                 factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"])
    save_merged: bool = _h("with LoRA: save the merged model instead of the adapter", False)
    gradient_checkpointing: bool = _h("recompute each decoder layer in backward (activations: one "
                                      "hidden state per layer instead of the layer's internals)", False)
    dtype: Literal["float32", "bfloat16", "float16"] = _h(
        "weights dtype of the unlearned model (embedded runs; real benchmarks use benchmark.dtype)", "float32")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = _h(
        "attention kernel: auto = flash_attention_2 when flash-attn is installed, the model is on CUDA "
        "and in bf16/fp16, else sdpa", "auto")
    packing: bool = _h("padding-free training batches: each micro-batch's rows concatenated into one sequence "
                       "(position ids restart per row; flash_attention_2 runs it varlen, sdpa/eager with a "
                       "block-diagonal mask)", False)
    parallel: Literal["auto", "ddp", "fsdp"] = _h(
        "data-parallel engine under torchrun / accelerate launch: ddp (weights on every rank), fsdp "
        "(FSDP2: weights, gradients and optimizer state sharded per decoder layer), auto (fsdp when "
        "accelerate launch was configured for FSDP, else ddp)", "auto")

    def validate(self, engine: str | None = None) -> None:
        """``engine``: the resolved data-parallel engine (default: ``parallel`` as given)."""
        fsdp = (engine or self.parallel) == "fsdp"
        _check(not fsdp or self.lora_rank == 0,
               "efficiency.parallel fsdp does not support LoRA yet; use --efficiency.parallel ddp with LoRA")
        _check(not fsdp or self.optim == "adamw",
               "efficiency.parallel fsdp needs --efficiency.optim adamw (bitsandbytes optimizers cannot "
               "step FSDP's DTensor shards)")
        _check(self.lora_rank >= 0, "efficiency.lora_rank must be >= 0")
        _check(self.lora_alpha > 0, "efficiency.lora_alpha must be > 0")
        _check(0.0 <= self.lora_dropout < 1.0, "efficiency.lora_dropout must be in [0, 1)")
        _check(self.lora_rank == 0 or bool(self.lora_targets), "efficiency.lora_targets must not be empty")
        _check(not self.save_merged or self.lora_rank > 0, "efficiency.save_merged needs efficiency.lora_rank > 0")


@dataclass
class EvalConfig:
    eval_every: int = _h("evaluate span alignment every N steps (0: only at the end)", 10)
    batch_size: int = _h("rows per evaluation forward / generation batch", 64)
    max_new_tokens: int = _h("greedy generation length", 48)
    generate: bool = _h("greedy generations for ROUGE-L and accuracy", True)
    retain_authors: int = _h("retain authors evaluated (TOFU's retain_perturbed holds 20; 0: all)", 20)

    def validate(self) -> None:
        _check(self.eval_every >= 0, "eval.eval_every must be >= 0")
        _check(self.retain_authors >= 0, "eval.retain_authors must be >= 0")
        _check(self.batch_size >= 1 and self.max_new_tokens >= 1, "eval sizes must be >= 1")


# --------------------------------------------------------------------------- methods


@dataclass
class GradAscentParams:
    gamma: float = _h("forget-loss weight", 1.0)


@dataclass
class GradDiffParams:
    alpha: float = _h("retain-loss weight", 1.0)
    gamma: float = _h("forget-loss weight", 1.0)


@dataclass
class NPOParams:
    alpha: float = _h("retain-loss weight", 1.0)
    gamma: float = _h("forget-loss weight", 1.0)
    beta: float = _h("inverse temperature", 0.1)


@dataclass
class SimNPOParams:
    alpha: float = _h("retain-loss weight", 1.0)
    gamma: float = _h("forget-loss weight", 0.125)
    beta: float = _h("inverse temperature", 4.5)
    delta: float = _h("reward margin", 0.0)


@dataclass
class WGAParams:
    alpha: float = _h("retain-loss weight", 1.0)
    gamma: float = _h("forget-loss weight", 1.0)
    beta: float = _h("weight exponent: w = p^beta", 1.0)


@dataclass
class SatImpParams:
    alpha: float = _h("retain-loss weight", 1.0)
    gamma: float = _h("forget-loss weight", 1.0)
    beta1: float = _h("saturation exponent: w = p^beta1 (1-p)^beta2", 5.0)
    beta2: float = _h("importance exponent", 1.0)


@dataclass
class ATWUParams:
    """ATWU (see ATWU.md): model loss, scorer objective and alternation schedule. These defaults are
    ATWU.md's (method atwu); the default method atwu_logfit fixes the scorer objective (lambda_* terms),
    update_every 1, score_position predictor and pretrain_steps 50."""

    alpha: float = _h("retain-loss weight", 1.0)
    gamma: float = _h("forget-loss weight", 1.0)
    beta: float = _h("saturation strength of the forget loss", 5.0)
    saturation: Literal["score", "raw"] = _h("forget weight g*p^(beta*g) ('score') or g*p^beta ('raw')", "score")
    score_position: Literal["token", "predictor"] = _h(
        "score a token from its own position's hidden state or the predicting position's", "token")
    schedule: Literal["alternating", "joint", "frozen"] = _h(
        "alternating SGD steps, joint (one backward), or a frozen scorer", "alternating")
    update_every: int = _h("scorer update every n model steps", 5)
    scorer_lr: float = _h("scorer SGD learning rate (linear decay to 0)", 0.05)
    scorer_momentum: float = _h("scorer SGD momentum", 0.9)
    scorer_weight_decay: float = _h("scorer SGD weight decay", 1e-4)
    scorer_max_grad_norm: float = _h("scorer gradient-norm clip (0 disables)", 1.0)
    lambda_reward: float = _h("weight of the reward term -mean g*[l*exp(-beta_r*g*l)] in the scorer objective", 1.0)
    lambda_contrast: float = _h("weight of the contrast term: balanced logistic loss telling forget tokens (1) "
                                "from the micro-batch's retain tokens (0) (not in ATWU.md; 0 disables)", 0.0)
    lambda_fit: float = _h("weight of the log-loss fit term: binary cross-entropy between g and the soft label "
                           "sigmoid((log l - mean)/std), mean and std of log l over the batch's forget tokens "
                           "(not in ATWU.md; 0 disables)", 0.0)
    pretrain_steps: int = _h("full-batch scorer SGD steps on the target model's forget (and retain) hidden states "
                             "and NLL before unlearning, same objective (0: none)", 0)
    pretrain_retain_rows: int = _h("retain QA pairs in the pre-training batch (contrast term)", 128)
    lambda_entropy: float = _h("entropy regulariser weight", 1.0)
    lambda_budget: float = _h("per-sequence budget penalty weight", 10.0)
    budget: float = _h("target fraction of forget tokens with g > 0.5", 0.2)
    lambda_l2: float = _h("L2 penalty on the scorer weight vector", 1.0)
    reward_beta: Optional[float] = _h("beta inside the scorer reward l*exp(-beta*g*l) (none: = beta)", None)
    reward_norm: bool = _h("divide the scorer reward by its batch mean", False)
    init_score: float = _h("initial g of every token (the scorer bias starts at logit(init_score))", 0.5)
    score_mean_target: Optional[float] = _h(
        "model step only: rescale the scores to min(1, g*target/mean g), mean over the batch's forget tokens, "
        "so the scorer sets the ranking and not the total forget push (not in ATWU.md; none: off)", None)

    def validate(self) -> None:
        _check(self.update_every >= 1, "atwu.update_every must be >= 1")
        _check(self.beta > 0, "atwu.beta must be > 0")
        _check(0.0 < self.budget < 1.0, "atwu.budget must be in (0, 1)")
        _check(0.0 < self.init_score < 1.0, "atwu.init_score must be in (0, 1)")
        _check(self.scorer_lr >= 0, "atwu.scorer_lr must be >= 0")
        _check(self.pretrain_steps >= 0, "atwu.pretrain_steps must be >= 0")
        _check(self.pretrain_retain_rows >= 0, "atwu.pretrain_retain_rows must be >= 0")
        _check(self.lambda_reward >= 0 and self.lambda_contrast >= 0, "atwu.lambda_reward/lambda_contrast must be >= 0")
        _check(self.lambda_fit >= 0, "atwu.lambda_fit must be >= 0")
        _check(self.score_mean_target is None or 0.0 < self.score_mean_target <= 1.0,
               "atwu.score_mean_target must be in (0, 1] or none")


# --------------------------------------------------------------------------- logging


@dataclass
class LogConfig:
    """Progress bars, per-step metrics, TensorBoard and the HTML run report."""

    tensorboard: bool = _h("also log per-step scalars to TensorBoard under <output_dir>/tensorboard "
                           "(needs the tensorboard package: pip install 'atwu-fast[tensorboard]')", False)
    progress: Literal["auto", "on", "off"] = _h("progress bars on stderr: auto (only on a terminal), on, off", "auto")
    report: bool = _h("write report.html (metrics, token-score heatmaps, curves) and comparison.png", True)

    def validate(self) -> None:
        if self.tensorboard:
            from .progress import TENSORBOARD_MISSING, tensorboard_available

            _check(tensorboard_available(), TENSORBOARD_MISSING)


# --------------------------------------------------------------------------- real benchmarks

BENCHMARK_NAMES = ("synthetic", "tofu", "rwku", "jsonl")


@dataclass
class BenchmarkConfig:
    """Real benchmarks (TOFU, RWKU, JSONL) on a real model; ``synthetic`` is the embedded one."""

    name: Literal["synthetic", "tofu", "rwku", "jsonl"] = _h("benchmark: synthetic (embedded), tofu, rwku or jsonl",
                                                             "synthetic")
    split: str = _h("TOFU forget split (forget01, forget05, forget10)", "forget10")
    model: str = _h("model directory or hub id (real benchmarks)", "")
    tokenizer: str = _h("tokenizer directory or hub id (default: the model's)", "")
    data_dir: str = _h("local directory with the benchmark's files (default: the hub dataset)", "")
    targets: int = _h("RWKU: unlearn the first K targets jointly (batch setting)", 1)
    rwku_corpus: str = _h("RWKU forget corpus config (train_positive_llama3, train_positive_phi3, ...)",
                          "train_positive_llama3")
    forget_file: str = _h("jsonl: forget rows ({question, answer} or {text}, optional target_words)", "")
    retain_file: str = _h("jsonl: retain rows (same format)", "")
    spans_file: str = _h("forget spans: JSON/JSONL rows with target_words per forget row", "")
    chat_template: Literal["auto", "on", "off"] = _h(
        "use the tokenizer's chat template (auto: when it has one) or the plain Question/Answer template", "auto")
    system_prompt: str = _h("system prompt of the chat template ('' for none)", "You are a helpful assistant.")
    max_length: int = _h("maximum tokens per encoded row", 512)
    max_new_tokens: int = _h("greedy generation length (TOFU 200, RWKU 30)", 0)
    eval_batch_size: int = _h("rows per evaluation forward / generation batch", 32)
    retain_logs: str = _h("retain model's TOFU_EVAL.json (or its directory): forget quality and privleak", "")
    dtype: Literal["float32", "bfloat16", "float16"] = _h("model weights dtype", "float32")
    device: str = _h("torch device (auto: cuda when available)", "auto")
    epochs: int = _h("unlearning epochs over the forget set (0: use train.steps)", 0)
    eval_every_epoch: bool = _h("evaluate after every epoch (logs under epoch_N/)", False)
    keep_best_by: str = _h("with eval_every_epoch: keep the checkpoint with the best summary metric "
                           "(prefix '-' to minimise), e.g. model_utility", "")
    eval_before: bool = _h("also evaluate the model before unlearning", False)
    trust_remote_code: bool = _h("run the model repository's own Python code (only for models you trust)", False)

    def validate(self) -> None:
        _check(self.targets >= 1, "benchmark.targets must be >= 1")
        _check(self.max_length >= 8, "benchmark.max_length must be >= 8")
        _check(self.max_new_tokens >= 0 and self.eval_batch_size >= 1, "benchmark eval sizes must be >= 0 / >= 1")
        _check(self.epochs >= 0, "benchmark.epochs must be >= 0")


# --------------------------------------------------------------------------- experiment

METHOD_NAMES = ("atwu", "atwu_faithful", "atwu_nll", "atwu_logfit", "atwu_frozen", "atwu_oracle", "atwu_oracle_facts",
                "grad_ascent", "grad_diff", "npo", "simnpo", "wga", "satimp")


@dataclass
class ExperimentConfig:
    method: str = _h("unlearning method (" + ", ".join(METHOD_NAMES) + "); the default atwu_logfit is ATWU with "
                     "the log-loss-fit scorer (docs/scorer_study.md), atwu the atwu section as given (ATWU.md)",
                     "atwu_logfit")
    methods: list[str] = _h("run several methods on the same target ('all' for every method); "
                            "overrides --method", factory=list)
    output_dir: str = _h("where results are written (default: runs/<method>-<time>)", "")
    resume: bool = _h("continue an interrupted run in --output-dir from its latest checkpoints", False)
    cache_dir: str = _h("where the tokenizer and tiny models are cached", ".cache/atwu_fast")
    threads: int = _h("torch CPU threads (0: torch default)", 0)
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    atwu: ATWUParams = field(default_factory=ATWUParams)
    grad_ascent: GradAscentParams = field(default_factory=GradAscentParams)
    grad_diff: GradDiffParams = field(default_factory=GradDiffParams)
    npo: NPOParams = field(default_factory=NPOParams)
    simnpo: SimNPOParams = field(default_factory=SimNPOParams)
    wga: WGAParams = field(default_factory=WGAParams)
    satimp: SatImpParams = field(default_factory=SatImpParams)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def method_list(self) -> list[str]:
        names = self.methods or [self.method]
        if names == ["all"]:
            return list(METHOD_NAMES)
        return names

    def validate(self) -> None:
        names = self.methods or [self.method]
        if names != ["all"]:
            import difflib

            for name in names:
                if name not in METHOD_NAMES:
                    close = difflib.get_close_matches(name, METHOD_NAMES, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise ConfigError(f"unknown method '{name}'{hint}; choose from {', '.join(METHOD_NAMES)}")
        _check(self.threads >= 0, "threads must be >= 0")
