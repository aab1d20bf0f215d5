"""The lean unlearning loop shared by every method.

One step = ``grad_accum`` micro-batches; each micro-batch pairs a forget batch (shuffled epochs over
the forget set) with a retain batch (shuffled epochs over the retain set) and runs ONE decoder
forward over both. The LM-head loss runs on the valid answer tokens only, chunked, so no N×V
logits exist. ATWU's scorer step (every ``update_every`` steps) uses the hidden states and NLL
cached from that same forward; its scores for the model step are computed under no_grad.
With gradient accumulation the scorer steps on each micro-batch of an update step.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from atwu_kernels import atwu_head

from .checkpoint import checkpoint_optimizer, checkpoint_weights, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import collate
from .distributed import (
    SINGLE,
    DistContext,
    ModelStep,
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    load_full_state_dict,
    run_on,
    sharded_root,
    wrap,
)
from .finetune import warmup_lambda
from .loading import pack_rows
from .methods import Method, TokenQuantities, variant_params
from .model import AnswerTokens, answer_tokens, decoder, last_hidden, lm_head, token_nll
from .optim import build_optimizer
from .sampling import EpochSampler
from .scorer import (
    LinearScorer,
    ScorerNorms,
    ScorerTrainer,
    mean_rescale_factor,
    pretrain_scorer,
    rescale_to_mean,
    scorer_objective,
)


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
    scorer: Optional[LinearScorer] = None
    evaluations: list[dict] = field(default_factory=list)  # what on_eval returned, by checkpoint


def score_hidden(tokens, position: str) -> torch.Tensor:
    """Hidden rows the scorer reads: the token's own position ("token") or its predictor's."""
    return tokens.hidden_token if position == "token" else tokens.hidden_pred


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
    def __init__(self, model, method: Method, params, cfg: TrainConfig, forget: list[dict], retain: list[dict],
                 pad_id: int, reference=None, log: Optional[Callable[[str], None]] = None, optim: str = "adamw",
                 dist: DistContext = SINGLE, parallel: str = "ddp", packing: bool = False):
        if method.needs_reference and reference is None:
            raise ValueError(f"{method.name} needs a reference model")
        self.model, self.method, self.cfg, self.pad_id, self.packing = model, method, cfg, pad_id, packing
        self.forget, self.retain, self.reference = forget, retain, reference
        self.log = log or (lambda m: None)
        self.dist = dist
        self.step_module = wrap(model, dist, parallel)
        if method.params_section == "atwu":
            params = variant_params(method.name, params)
        self.params = params
        self.scorer = self.scorer_trainer = None
        model_params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": model_params}]
        if method.needs_scorer:
            hidden_size = model.get_output_embeddings().weight.shape[1]
            device = model.get_output_embeddings().weight.device
            self.scorer = LinearScorer(hidden_size, params.init_score).to(device)  # beside the hidden states
            self.pretrain_losses = self.pretrain_scorer() if params.pretrain_steps else []
            if params.schedule == "alternating":
                updates = math.ceil(cfg.steps / params.update_every) * cfg.grad_accum
                self.scorer_trainer = ScorerTrainer(self.scorer, params, updates)
            elif params.schedule == "joint":
                groups.append({"params": list(self.scorer.parameters()), "weight_decay": 0.0})
            else:
                self.scorer.requires_grad_(False)
        self.optimizer = build_optimizer(groups, optim, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_lambda(cfg.warmup_steps, cfg.steps, cfg.lr_schedule))
        self.forget_batches = EpochSampler(len(forget), cfg.forget_batch_size, cfg.seed, min_batch=dist.world)
        self.retain_batches = EpochSampler(len(retain), cfg.retain_batch_size, cfg.seed + 1, min_batch=dist.world)

    # ------------------------------------------------------------------ one micro-batch
    def batch(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Right-padded batch on the model's device, or with ``packing`` the rows' real tokens
        concatenated into one sequence (:func:`~atwu_fast.loading.pack_rows`)."""
        device = self.model.get_input_embeddings().weight.device
        batch = pack_rows(rows) if self.packing else collate(rows, pad_id=self.pad_id)
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    @staticmethod
    def forward_tokens(model, batch: dict) -> tuple[AnswerTokens, Optional[torch.Tensor]]:
        """The answer tokens of a padded or packed batch (``seq`` = the row) and their span kinds."""
        if "position_ids" in batch:  # packed: one row, boundaries from the restarting positions
            hidden = decoder(model)(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                    use_cache=False).last_hidden_state
            tokens = answer_tokens(hidden, batch["labels"])
            kinds = batch["span_kind"][0, tokens.position] if "span_kind" in batch else None
            tokens.seq = batch["seq"][tokens.position]
            return tokens, kinds
        tokens = answer_tokens(last_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])
        kinds = batch["span_kind"][tokens.seq, tokens.position] if "span_kind" in batch else None
        return tokens, kinds

    def micro_step(self, step: int, stats: dict) -> torch.Tensor:
        """Loss of one micro-batch (this rank's shard of it when distributed; see
        :mod:`atwu_fast.distributed` for why it is scaled by the world size)."""
        self.last_batch = (next(self.forget_batches), next(self.retain_batches))
        forget_rows = [self.forget[i] for i in self.dist.shard(self.last_batch[0])]
        retain_rows = [self.retain[i] for i in self.dist.shard(self.last_batch[1])]
        batch = self.batch(forget_rows + retain_rows)
        norms = self.global_counts(forget_rows, retain_rows)
        loss = self.step_module(lambda model: self.micro_loss(step, stats, batch, forget_rows, norms))
        return loss * self.dist.world

    def global_counts(self, forget_rows: list[dict], retain_rows: list[dict]) -> Normalisers:
        """N_F, N_R and the number of forget sequences summed over ranks (None: single process,
        the loss functions count their own inputs)."""
        if not self.dist.enabled:
            return Normalisers()

        def answer_count(rows: list[dict]) -> int:  # labels of positions 1.. (position 0 is never predicted)
            return sum(sum(1 for label in row["labels"][1:] if label != -100) for row in rows)

        device = self.model.get_input_embeddings().weight.device
        counts = torch.tensor([answer_count(forget_rows), answer_count(retain_rows), len(forget_rows)],
                              dtype=torch.float64, device=device)
        self.dist.all_reduce_sum(counts)
        counts = counts.clamp_min(1).float()
        return Normalisers(counts[0], counts[1], counts[2])

    def micro_loss(self, step: int, stats: dict, batch: dict, forget_rows: list[dict], norms: Normalisers):
        tokens, kinds = self.forward_tokens(self.model, batch)
        is_forget = tokens.seq < len(forget_rows)
        if self.scorer is not None and self.cfg.fused_head:
            return self.fused_atwu_step(step, tokens, is_forget, len(forget_rows), stats, norms)
        nll = token_nll(self.model, tokens, self.cfg.loss_chunk_size)
        q = TokenQuantities(forget_nll=nll[is_forget], forget_seq=tokens.seq[is_forget],
                            n_forget_seqs=len(forget_rows), retain_nll=nll[~is_forget],
                            forget_span_kind=kinds[is_forget] if kinds is not None else None,
                            n_forget=norms.n_forget, n_retain=norms.n_retain, n_seqs_total=norms.n_seqs)
        if self.method.needs_reference:
            q.ref_forget_nll = self.reference_nll(forget_rows)
        loss = torch.zeros((), dtype=nll.dtype)
        if self.scorer is not None:
            h_score = score_hidden(tokens, self.params.score_position)
            loss = loss + self.scorer_pass(step, h_score[is_forget], q, stats, h_score[~is_forget])
        loss = loss + self.method.loss(q, self.params)
        self.record_nll(stats, q.forget_nll, q.retain_nll)
        return loss

    def fused_atwu_step(self, step: int, tokens, is_forget: torch.Tensor, n_seqs: int, stats: dict,
                        norms: Normalisers) -> torch.Tensor:
        """ATWU through the fused head: the same loss and gradients as the unfused path.

        The scorer must step before the model's scores are taken, and its reward needs ℓ, so on
        scorer-update steps a forward-only NLL pass (2NDV) precedes the fused head (6NDV).
        """
        params = self.params
        weight, bias = lm_head(self.model)
        h_score = score_hidden(tokens, params.score_position).detach()
        h_forget = h_score[is_forget]
        q = TokenQuantities(forget_nll=torch.zeros(0), forget_seq=tokens.seq[is_forget], n_forget_seqs=n_seqs,
                            retain_nll=torch.zeros(0), n_forget=norms.n_forget, n_retain=norms.n_retain,
                            n_seqs_total=norms.n_seqs)
        extra = torch.zeros(())
        if params.schedule == "alternating" and step % params.update_every == 0:
            with torch.no_grad():
                q.forget_nll = token_nll(self.model, tokens, self.cfg.loss_chunk_size)[is_forget]
            extra = self.scorer_pass(step, h_forget, q, stats, h_score[~is_forget])
        scale = None
        if params.score_mean_target is not None:
            with torch.no_grad():
                scale = self.score_scale(self.scorer(h_forget), norms.n_forget)
        out = atwu_head(tokens.hidden_pred, weight, tokens.targets, is_forget, self.scorer.weight, self.scorer.bias,
                        score_hidden=h_score, alpha=params.alpha, gamma=params.gamma, beta=params.beta,
                        saturation=params.saturation, score_scale=scale, bias=bias,
                        chunk_size=self.cfg.loss_chunk_size, n_forget=norms.n_forget, n_retain=norms.n_retain)
        if params.schedule != "alternating":
            q.forget_nll = out.nll[is_forget]
            extra = self.scorer_pass(step, h_forget, q, stats, h_score[~is_forget])
        self.record_nll(stats, out.nll[is_forget], out.nll[~is_forget])
        stats["score_mean"] = out.scores[is_forget].mean().item()
        stats["score_frac"] = (out.scores[is_forget] > 0.5).float().mean().item()
        return out.loss + extra

    def score_scale(self, forget_scores: torch.Tensor, n_forget) -> torch.Tensor:
        """c = score_mean_target / mean g over the (global) batch's forget tokens (see
        :func:`atwu_fast.scorer.rescale_to_mean`)."""
        return mean_rescale_factor(forget_scores, self.params.score_mean_target, n_forget,
                                   self.dist.all_reduce_sum if self.dist.enabled else None)

    def record_nll(self, stats: dict, forget_nll: torch.Tensor, retain_nll: torch.Tensor) -> None:
        stats["forget_nll"] += forget_nll.detach().mean().item() / self.cfg.grad_accum
        stats["retain_nll"] += retain_nll.detach().mean().item() / self.cfg.grad_accum

    def scorer_pass(self, step: int, hidden_f: torch.Tensor, q: TokenQuantities, stats: dict,
                    hidden_r: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scorer update on cached quantities (alternating), then the constant scores for the model loss.

        ``hidden_r``: the retain tokens' hidden rows at the score position (the contrast term).
        Returns the scorer loss to add to the model loss in the "joint" schedule, else 0.
        """
        hidden_f = hidden_f.detach()
        hidden_r = hidden_r.detach() if hidden_r is not None else None
        nll_f = q.forget_nll.detach()
        extra = torch.zeros(())
        norms = None
        if self.dist.enabled:
            norms = ScorerNorms(q.nf(), q.nr(), q.nseq(), self.dist.world, self.dist.all_reduce_sum)
        if self.params.schedule == "alternating" and step % self.params.update_every == 0:
            parts = self.scorer_trainer.step(hidden_f, nll_f, q.forget_seq, q.n_forget_seqs, hidden_r, norms)
            stats["scorer_loss"] = parts.total.item()
        elif self.params.schedule == "joint":
            parts = scorer_objective(self.scorer, hidden_f, nll_f, q.forget_seq, q.n_forget_seqs, self.params,
                                     hidden_retain=hidden_r, norms=norms)
            stats["scorer_loss"] = parts.total.item()
            extra = parts.total
        with torch.no_grad():
            q.forget_scores = self.scorer(hidden_f)
        stats["score_mean"] = q.forget_scores.mean().item()
        stats["score_frac"] = (q.forget_scores > 0.5).float().mean().item()
        if self.params.score_mean_target is not None:  # the model step's scores (the scorer saw the raw g)
            q.forget_scores = rescale_to_mean(q.forget_scores, self.params.score_mean_target, q.n_forget,
                                              self.dist.all_reduce_sum if self.dist.enabled else None)
        return extra

    def pretrain_scorer(self) -> list[float]:
        """``pretrain_steps`` scorer steps on the (not yet unlearned) model: every forget row and the
        first ``pretrain_retain_rows`` retain rows, no-grad forwards of micro-batch size (only the
        score-position hidden rows and NLL of the answer tokens are kept), cached and detached."""
        retain_rows = self.retain[:self.params.pretrain_retain_rows]
        rows = self.forget + retain_rows
        chunk = max(self.cfg.forget_batch_size, self.cfg.retain_batch_size)

        def target_tokens(model):
            tokens, _ = self.forward_tokens(model, batch)
            return score_hidden(tokens, self.params.score_position).detach(), token_nll(
                model, tokens, self.cfg.loss_chunk_size), tokens.seq

        hidden, nlls, seqs = [], [], []
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            for start in range(0, len(rows), chunk):  # every rank: the same rows, the same forwards
                batch = self.batch(rows[start:start + chunk])
                h_part, nll_part, seq_part = run_on(self.model, target_tokens)
                hidden.append(h_part)
                nlls.append(nll_part)
                seqs.append(seq_part + start)
            self.model.train(was_training)
        h, nll, seq = torch.cat(hidden), torch.cat(nlls), torch.cat(seqs)
        is_forget = seq < len(self.forget)
        return pretrain_scorer(self.scorer, self.params, h[is_forget], nll[is_forget], seq[is_forget],
                               len(self.forget), h[~is_forget] if retain_rows else None, self.params.pretrain_steps)

    @torch.no_grad()
    def reference_nll(self, forget_rows: list[dict]) -> torch.Tensor:
        """Forget-token NLL under the reference: a separate model, or (``reference`` a zero-argument
        callable returning a context manager, e.g. :func:`atwu_fast.lora.reference_context`) the trained
        model itself inside that context — LoRA's adapter-disabled base, no second copy of the weights."""
        batch = self.batch(forget_rows)
        if isinstance(self.reference, torch.nn.Module):
            return token_nll(self.reference, self.forward_tokens(self.reference, batch)[0], self.cfg.loss_chunk_size)
        with self.reference():
            return token_nll(self.model, self.forward_tokens(self.model, batch)[0], self.cfg.loss_chunk_size)

    # ------------------------------------------------------------------ the loop
    # ------------------------------------------------------------------ checkpointable state
    def state_dict(self, result: UnlearnResult, step: int) -> dict:
        state = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "forget_batches": self.forget_batches.state_dict(),
            "retain_batches": self.retain_batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": result.history,
            "evaluations": result.evaluations,
        }
        if self.scorer is not None:
            state["scorer"] = self.scorer.state_dict()
        if self.scorer_trainer is not None:
            state["scorer_optimizer"] = self.scorer_trainer.optimizer.state_dict()
            state["scorer_schedule"] = self.scorer_trainer.schedule.state_dict()
            state["scorer_updates"] = self.scorer_trainer.updates
        return state

    def load_state_dict(self, state: dict, result: UnlearnResult) -> int:
        """Restore everything but the model weights; returns the number of steps already done."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.forget_batches.load_state_dict(state["forget_batches"])
        self.retain_batches.load_state_dict(state["retain_batches"])
        torch.set_rng_state(state["torch_rng"])
        result.history[:] = state["history"]
        result.evaluations[:] = state["evaluations"]
        if self.scorer is not None:
            self.scorer.load_state_dict(state["scorer"])
        if self.scorer_trainer is not None:
            self.scorer_trainer.optimizer.load_state_dict(state["scorer_optimizer"])
            self.scorer_trainer.schedule.load_state_dict(state["scorer_schedule"])
            self.scorer_trainer.updates = state["scorer_updates"]
        return int(state["step"])

    def optimised_extras(self) -> dict:
        """Modules outside the model that the model optimizer also steps (the joint scorer)."""
        return {"scorer": self.scorer} if self.scorer is not None and self.params.schedule == "joint" else {}

    def checkpoint(self, directory, result: UnlearnResult, step: int) -> None:
        """Rank 0 writes; under FSDP every rank first takes part in gathering the weights and the
        optimizer state."""
        if sharded_root(self.model) is None:
            if self.dist.is_main:
                save_checkpoint(directory, step, self.model, self.state_dict(result, step))
            return
        weights = full_state_dict(self.model)
        optimizer = full_optimizer_state(self.model, self.optimizer, self.optimised_extras())
        if self.dist.is_main:
            save_checkpoint(directory, step, weights, {**self.state_dict(result, step), "optimizer": None}, optimizer)

    def restore(self, path, result: UnlearnResult) -> int:
        """Weights and trainer state from checkpoint ``path``. Under FSDP only rank 0 reads the
        gathered weights and optimizer state, and broadcasts them shard by shard."""
        if sharded_root(self.model) is None:
            return self.load_state_dict(load_checkpoint(path, self.model), result)
        main = self.dist.is_main
        load_full_state_dict(self.model, checkpoint_weights(path) if main else {})
        load_full_optimizer_state(self.model, self.optimizer, self.optimised_extras(),
                                  checkpoint_optimizer(path) if main else {})
        state = load_checkpoint(path, None)
        state["optimizer"] = self.optimizer.state_dict()
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
        result = UnlearnResult(scorer=self.scorer)
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
        if self.dist.enabled and self.scorer is not None and self.params.schedule == "joint":
            for p in self.scorer.parameters():  # not inside DDP: average its gradient by hand
                self.dist.all_reduce_sum(p.grad).div_(self.dist.world)
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
