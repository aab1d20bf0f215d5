"""The lean unlearning loop shared by every method.

One step = ``grad_accum`` micro-batches; each micro-batch pairs a forget batch (shuffled epochs over
the forget set) with a retain batch (shuffled epochs over the retain set) and runs ONE decoder
forward over both. The LM-head loss runs on the valid answer tokens only, chunked, so no N×V
logits exist. A method's :class:`~atwu_fast.methods.base.TrainingHooks` may take over the loss
after the forward (a fused head), add a term before the loss, and act before the model step (ATWU's
scorer lives there); the loop itself knows no method.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..data.labels import answer_label_count
from ..methods.base import HookContext, Method, TokenQuantities, TrainingHooks
from ..model.distributed import (
    SINGLE,
    DistContext,
    ModelStep,
    wrap,
)
from ..model.tokens import forward_answer_tokens, make_batch, token_nll
from .checkpoint import latest_checkpoint, load_training_checkpoint, save_training_checkpoint
from .config import TrainConfig
from .optim import build_optimizer
from .sampling import EpochSampler
from .schedule import warmup_lambda


@dataclass
class Normalisers:
    """Global normalisers of one micro-batch (distributed runs); None lets each loss count its own."""

    n_forget: Optional[torch.Tensor] = None
    n_retain: Optional[torch.Tensor] = None
    n_seqs: Optional[torch.Tensor] = None


class DivergenceError(RuntimeError):
    """A non-finite loss or gradient (or a gradient norm over the guard): the step is not taken."""


@dataclass
class UnlearnResult:
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)  # what on_eval returned, by checkpoint


def clip_grad_norm(params: list, max_norm: float) -> float:
    """torch's ``clip_grad_norm_`` (total L2 norm, grads scaled by max_norm / (norm + 1e-6) when
    above it), also over FSDP's DTensor gradient shards mixed with plain ones (the joint scorer)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    plain = [g for g in grads if not isinstance(g, DTensor)]
    squares = torch.nn.utils.get_total_norm(sharded).full_tensor().double() ** 2
    if plain:
        squares = squares + torch.nn.utils.get_total_norm(plain).double() ** 2
    total = squares.sqrt().item()
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


class Unlearner:
    """Unlearns ``forget`` rows from ``model`` with ``method`` (``params``: its config section, the
    method's fixed fields applied here) while keeping ``retain`` rows."""

    def __init__(self, model, method: Method, params, cfg: TrainConfig, forget: list[dict], retain: list[dict],
                 pad_id: int, reference=None, log: Optional[Callable[[str], None]] = None, optim: str = "adamw",
                 dist: DistContext = SINGLE, parallel: str = "ddp", packing: bool = False,
                 forget_source: Optional[list[dict]] = None, encode: Optional[Callable[[str, str], dict]] = None):
        """``params``: the method's config section(s) (``method.sections(cfg)``). ``forget_source`` (the
        forget rows as the data has them) and ``encode(question, answer)`` (a new row in the benchmark's
        format) let a method build rows of its own, e.g. DPO's preferred answers."""
        if method.needs_reference and reference is None:
            raise ValueError(f"{method.name} needs a reference model")
        self.model, self.method, self.cfg, self.pad_id, self.packing = model, method, cfg, pad_id, packing
        self.forget, self.retain, self.reference = forget, retain, reference
        self.forget_source, self.encode = forget_source, encode
        self.forget_indices: list[int] = []  # this rank's forget and retain rows of the current micro-batch
        self.retain_indices: list[int] = []
        self.log = log or (lambda m: None)
        self.dist = dist
        self.params = method.params(params)
        self.hooks: TrainingHooks = method.make_hooks(self.params)
        self.context = HookContext(self)  # all the hooks see of this loop
        self.hooks.select_parameters(model)  # before wrapping: DDP / FSDP register what trains
        self.step_module = wrap(model, dist, parallel)
        # Collected right after wrapping, before setup: setup may forward through the wrapped model
        # (ATWU's scorer pre-training), after which FSDP's model.parameters() no longer yields the
        # sharded parameters every rank steps, and the ranks drift apart from the first step.
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        groups += self.hooks.setup(self.context)
        self.optimizer = build_optimizer(groups, optim, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_lambda(cfg.warmup_steps, cfg.steps, cfg.lr_schedule))
        self.forget_batches = EpochSampler(len(forget), cfg.forget_batch_size, cfg.seed, min_batch=dist.world)
        self.retain_batches = EpochSampler(len(retain), cfg.retain_batch_size, cfg.seed + 1, min_batch=dist.world)

    # ------------------------------------------------------------------ one micro-batch
    def batch(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The rows as one batch on the model's device (padded, or packed with ``packing``)."""
        return make_batch(rows, self.pad_id, self.model.get_input_embeddings().weight.device, self.packing)

    def token_weights(self, tokens, rows: list[dict]) -> Optional[torch.Tensor]:
        """The weights the method puts on evaluated forget tokens (learned scores, a mask, or a function
        of ``tokens.nll``), or None; ``rows``: the encoded rows of that batch."""
        weights = self.hooks.token_weights(tokens, rows)
        if weights is None and self.method.token_weights is not None:
            weights = self.method.token_weights(tokens.nll, self.params)
        return weights

    def micro_step(self, step: int, stats: dict) -> torch.Tensor:
        """Loss of one micro-batch (this rank's shard of it when distributed; see
        :mod:`atwu_fast.model.distributed` for why it is scaled by the world size)."""
        self.last_batch = (next(self.forget_batches), next(self.retain_batches))
        self.forget_indices = self.dist.shard(self.last_batch[0])
        self.retain_indices = self.dist.shard(self.last_batch[1])
        forget_rows = [self.forget[i] for i in self.forget_indices]
        retain_rows = [self.retain[i] for i in self.retain_indices]
        batch = self.batch(forget_rows + retain_rows)
        norms = self.global_counts(forget_rows, retain_rows)
        loss = self.step_module(lambda model: self.micro_loss(step, stats, batch, forget_rows, norms))
        return loss * self.dist.world

    def global_counts(self, forget_rows: list[dict], retain_rows: list[dict]) -> Normalisers:
        """N_F, N_R and the number of forget sequences summed over ranks (None: single process,
        the loss functions count their own inputs)."""
        if not self.dist.enabled:
            return Normalisers()
        device = self.model.get_input_embeddings().weight.device
        counts = torch.tensor([sum(answer_label_count(r["labels"]) for r in forget_rows),
                               sum(answer_label_count(r["labels"]) for r in retain_rows), len(forget_rows)],
                              dtype=torch.float64, device=device)
        self.dist.all_reduce_sum(counts)
        counts = counts.clamp_min(1).float()
        return Normalisers(counts[0], counts[1], counts[2])

    def micro_loss(self, step: int, stats: dict, batch: dict, forget_rows: list[dict], norms: Normalisers):
        tokens, kinds = forward_answer_tokens(self.model, batch)
        is_forget = tokens.seq < len(forget_rows)
        q = TokenQuantities(forget_nll=torch.zeros(0), forget_seq=tokens.seq[is_forget],
                            n_forget_seqs=len(forget_rows), retain_nll=torch.zeros(0),
                            forget_span_kind=kinds[is_forget] if kinds is not None else None,
                            n_forget=norms.n_forget, n_retain=norms.n_retain, n_seqs_total=norms.n_seqs)
        fused = self.hooks.after_forward(self.context, step, tokens, is_forget, q, stats)
        if fused is not None:
            return fused
        nll = token_nll(self.model, tokens, self.cfg.loss_chunk_size)
        q.forget_nll, q.retain_nll = nll[is_forget], nll[~is_forget]
        if self.method.needs_reference:
            q.ref_forget_nll = self.reference_nll(forget_rows)
        loss = torch.zeros((), dtype=nll.dtype)
        loss = loss + self.hooks.before_loss(self.context, step, tokens, is_forget, q, stats)
        loss = loss + self.method.loss(q, self.params)
        self.record_nll(stats, q.forget_nll, q.retain_nll)
        return loss

    def record_nll(self, stats: dict, forget_nll: torch.Tensor, retain_nll: torch.Tensor) -> None:
        stats["forget_nll"] += forget_nll.detach().mean().item() / self.cfg.grad_accum
        stats["retain_nll"] += retain_nll.detach().mean().item() / self.cfg.grad_accum

    @torch.no_grad()
    def reference_forward(self, rows: list[dict], fn: Callable):
        """``fn(model, tokens)`` on the rows' answer tokens under the reference: a separate model, or
        (``reference`` a zero-argument callable returning a context manager, e.g.
        :meth:`atwu_fast.model.lora.LoraHandle.reference`) the trained model itself inside that context —
        LoRA's adapter-disabled base, no second copy of the weights."""
        batch = self.batch(rows)
        if isinstance(self.reference, torch.nn.Module):
            return fn(self.reference, forward_answer_tokens(self.reference, batch)[0])
        with self.reference():
            return fn(self.model, forward_answer_tokens(self.model, batch)[0])

    def reference_nll(self, rows: list[dict]) -> torch.Tensor:
        """The rows' answer-token NLL under the reference (constant)."""
        return self.reference_forward(rows, lambda m, tokens: token_nll(m, tokens, self.cfg.loss_chunk_size))

    # ------------------------------------------------------------------ checkpointable state
    def state_dict(self, result: UnlearnResult, step: int) -> dict:
        return {
            "step": step,
            "schedule": self.schedule.state_dict(),
            "forget_batches": self.forget_batches.state_dict(),
            "retain_batches": self.retain_batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": result.history,
            "evaluations": result.evaluations,
            **self.hooks.state_dict(),
        }

    def load_state_dict(self, state: dict, result: UnlearnResult) -> int:
        """Restore the loop's state (not the weights, not the optimizer); returns the steps already done."""
        self.schedule.load_state_dict(state["schedule"])
        self.forget_batches.load_state_dict(state["forget_batches"])
        self.retain_batches.load_state_dict(state["retain_batches"])
        torch.set_rng_state(state["torch_rng"])
        result.history[:] = state["history"]
        result.evaluations[:] = state["evaluations"]
        self.hooks.load_state_dict(state)
        return int(state["step"])

    def checkpoint(self, directory, result: UnlearnResult, step: int) -> None:
        """Every rank calls (an FSDP run gathers the weights first); rank 0 writes."""
        save_training_checkpoint(directory, step, self.model, self.optimizer, self.hooks.optimised_modules(),
                                 self.state_dict(result, step), self.dist.is_main)

    def restore(self, path, result: UnlearnResult) -> int:
        """Weights, optimizer and loop state from checkpoint ``path``; returns the steps already done."""
        state = load_training_checkpoint(path, self.model, self.optimizer, self.hooks.optimised_modules(),
                                         self.dist.is_main)
        return self.load_state_dict(state, result)

    # ------------------------------------------------------------------ the loop
    def run(self, eval_every: int = 0, on_eval: Optional[Callable[[int], Optional[dict]]] = None,
            on_step: Optional[Callable[[dict], None]] = None, checkpoint_dir=None,
            resume: bool = False) -> UnlearnResult:
        """Train for ``cfg.steps`` steps. ``on_step(stats)`` after every step (logging, progress);
        ``on_eval(step)`` every ``eval_every`` steps and after the last (model in eval mode); what it
        returns is kept in ``result.evaluations``. With ``checkpoint_dir``, a checkpoint is written
        every ``cfg.checkpoint_every`` steps and at the end; ``resume`` continues from the latest."""
        torch.manual_seed(self.cfg.seed)
        result = UnlearnResult()
        start = 0
        if resume and checkpoint_dir is not None:
            found = self.dist.decide(latest_checkpoint(checkpoint_dir))
            if found is not None:
                start = self.restore(found, result)
                self.log(f"  resumed from {found} (step {start})")
        trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        try:
            for step in range(start, self.cfg.steps):
                stats = self.train_step(step, trainable)
                result.history.append(stats)
                if on_step:
                    on_step(stats)
                done = step + 1
                if on_eval and ((eval_every and done % eval_every == 0) or done == self.cfg.steps):
                    self.model.eval()
                    evaluation = on_eval(done)
                    if evaluation is not None:
                        result.evaluations.append(evaluation)
                every = self.cfg.checkpoint_every
                if checkpoint_dir is not None and ((every and done % every == 0) or done == self.cfg.steps):
                    self.checkpoint(checkpoint_dir, result, done)
        except BaseException:
            self.release_distributed(synchronise=False)  # no barrier: the other ranks may not be here
            raise
        self.model.eval()
        self.release_distributed()
        return result

    def release_distributed(self, synchronise: bool = True) -> None:
        """Drop the DDP wrapper while the process group is still alive: DDP's reducer must not be the
        one to destroy the group, or its destructor (holding the GIL) can deadlock with the gloo
        worker thread that frees the last all-reduce's tensors (which needs the GIL). An FSDP model
        stays sharded (its evaluation and saving run on every rank)."""
        if self.dist.enabled and isinstance(self.step_module, torch.nn.parallel.DistributedDataParallel):
            if synchronise:
                self.dist.barrier()
            self.step_module = ModelStep(self.model)
            gc.collect()

    def train_step(self, step: int, trainable: list) -> dict:
        """One optimiser step; raises :class:`DivergenceError` (step not taken) on a non-finite
        loss or gradient, or a gradient norm above ``cfg.abort_grad_norm``."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"step": step + 1, "forget_nll": 0.0, "retain_nll": 0.0}
        total = 0.0
        for _ in range(self.cfg.grad_accum):
            loss = self.micro_step(step, stats) / self.cfg.grad_accum
            loss.backward()
            total += loss.detach()
        total = (self.dist.all_reduce_sum(total.double()) / self.dist.world).item()
        self.hooks.before_model_step(self.context)
        clip = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        grad_norm = clip_grad_norm(trainable, clip)
        problem = None
        if not math.isfinite(total):
            problem = f"non-finite loss ({total})"
        elif not math.isfinite(grad_norm):
            problem = f"non-finite gradient norm ({grad_norm})"
        elif self.cfg.abort_grad_norm and grad_norm > self.cfg.abort_grad_norm:
            problem = f"gradient norm {grad_norm:.3g} above train.abort_grad_norm={self.cfg.abort_grad_norm:g}"
        if problem:
            self.optimizer.zero_grad(set_to_none=True)
            raise DivergenceError(f"{problem} at step {step + 1}; batch: forget rows {self.last_batch[0]}, "
                                  f"retain rows {self.last_batch[1]}")
        stats["grad_norm"] = grad_norm
        stats["lr"] = self.schedule.get_last_lr()[0]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # no gradient memory held through evaluation
        self.schedule.step()
        stats["loss"] = total
        return stats
