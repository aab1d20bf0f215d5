"""The lean unlearning loop shared by every method.

One step = ``grad_accum`` micro-batches; each micro-batch pairs a forget batch (shuffled epochs over
the forget set) with a retain batch (shuffled epochs over the retain set) and runs ONE decoder
forward over both. The LM-head loss runs on the valid answer tokens only, chunked, so no N×V
logits exist. ATWU's scorer step (every ``update_every`` steps) uses the hidden states and NLL
cached from that same forward; its scores for the model step are computed under no_grad.
With gradient accumulation the scorer steps on each micro-batch of an update step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from atwu_kernels import atwu_head

from .config import TrainConfig
from .data import collate
from .finetune import epoch_batches, warmup_lambda
from .methods import Method, TokenQuantities
from .model import answer_tokens, last_hidden, lm_head, token_nll
from .scorer import LinearScorer, ScorerTrainer, scorer_objective


@dataclass
class UnlearnResult:
    history: list[dict] = field(default_factory=list)
    scorer: Optional[LinearScorer] = None


def score_hidden(tokens, position: str) -> torch.Tensor:
    """Hidden rows the scorer reads: the token's own position ("token") or its predictor's."""
    return tokens.hidden_token if position == "token" else tokens.hidden_pred


class Unlearner:
    def __init__(self, model, method: Method, params, cfg: TrainConfig, forget: list[dict], retain: list[dict],
                 pad_id: int, reference=None, log: Optional[Callable[[str], None]] = None):
        if method.needs_reference and reference is None:
            raise ValueError(f"{method.name} needs a reference model")
        self.model, self.method, self.cfg, self.pad_id = model, method, cfg, pad_id
        self.forget, self.retain, self.reference = forget, retain, reference
        self.log = log or (lambda m: None)
        if method.name == "atwu_frozen":
            params = dataclasses.replace(params, schedule="frozen")
        self.params = params
        self.scorer = self.scorer_trainer = None
        model_params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": model_params}]
        if method.needs_scorer:
            hidden_size = model.get_output_embeddings().weight.shape[1]
            self.scorer = LinearScorer(hidden_size, params.init_score)
            if params.schedule == "alternating":
                updates = math.ceil(cfg.steps / params.update_every) * cfg.grad_accum
                self.scorer_trainer = ScorerTrainer(self.scorer, params, updates)
            elif params.schedule == "joint":
                groups.append({"params": list(self.scorer.parameters()), "weight_decay": 0.0})
            else:
                self.scorer.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_lambda(cfg.warmup_steps, cfg.steps, cfg.lr_schedule))
        generator = torch.Generator().manual_seed(cfg.seed)
        self.forget_batches = epoch_batches(len(forget), cfg.forget_batch_size, generator)
        self.retain_batches = epoch_batches(len(retain), cfg.retain_batch_size, generator)

    # ------------------------------------------------------------------ one micro-batch
    def micro_step(self, step: int, stats: dict) -> torch.Tensor:
        forget_rows = [self.forget[i] for i in next(self.forget_batches)]
        retain_rows = [self.retain[i] for i in next(self.retain_batches)]
        batch = collate(forget_rows + retain_rows, pad_id=self.pad_id)
        hidden = last_hidden(self.model, batch["input_ids"], batch["attention_mask"])
        tokens = answer_tokens(hidden, batch["labels"])
        is_forget = tokens.seq < len(forget_rows)
        if self.scorer is not None and self.cfg.fused_head:
            return self.fused_atwu_step(step, tokens, is_forget, len(forget_rows), stats)
        nll = token_nll(self.model, tokens, self.cfg.loss_chunk_size)
        q = TokenQuantities(forget_nll=nll[is_forget], forget_seq=tokens.seq[is_forget],
                            n_forget_seqs=len(forget_rows), retain_nll=nll[~is_forget],
                            forget_span_kind=batch["span_kind"][tokens.seq, tokens.position][is_forget])
        if self.method.needs_reference:
            q.ref_forget_nll = self.reference_nll(forget_rows)
        loss = torch.zeros((), dtype=nll.dtype)
        if self.scorer is not None:
            loss = loss + self.scorer_pass(step, score_hidden(tokens, self.params.score_position)[is_forget], q, stats)
        loss = loss + self.method.loss(q, self.params)
        self.record_nll(stats, q.forget_nll, q.retain_nll)
        return loss

    def fused_atwu_step(self, step: int, tokens, is_forget: torch.Tensor, n_seqs: int, stats: dict) -> torch.Tensor:
        """ATWU through the fused head: the same loss and gradients as the unfused path.

        The scorer must step before the model's scores are taken, and its reward needs ℓ, so on
        scorer-update steps a forward-only NLL pass (2NDV) precedes the fused head (6NDV).
        """
        params = self.params
        weight, bias = lm_head(self.model)
        h_score = score_hidden(tokens, params.score_position).detach()
        h_forget = h_score[is_forget]
        q = TokenQuantities(forget_nll=torch.zeros(0), forget_seq=tokens.seq[is_forget], n_forget_seqs=n_seqs,
                            retain_nll=torch.zeros(0))
        extra = torch.zeros(())
        if params.schedule == "alternating" and step % params.update_every == 0:
            with torch.no_grad():
                q.forget_nll = token_nll(self.model, tokens, self.cfg.loss_chunk_size)[is_forget]
            extra = self.scorer_pass(step, h_forget, q, stats)
        out = atwu_head(tokens.hidden_pred, weight, tokens.targets, is_forget, self.scorer.weight, self.scorer.bias,
                        score_hidden=h_score, alpha=params.alpha, gamma=params.gamma, beta=params.beta,
                        saturation=params.saturation, bias=bias, chunk_size=self.cfg.loss_chunk_size)
        if params.schedule != "alternating":
            q.forget_nll = out.nll[is_forget]
            extra = self.scorer_pass(step, h_forget, q, stats)
        self.record_nll(stats, out.nll[is_forget], out.nll[~is_forget])
        stats["score_mean"] = out.scores[is_forget].mean().item()
        stats["score_frac"] = (out.scores[is_forget] > 0.5).float().mean().item()
        return out.loss + extra

    def record_nll(self, stats: dict, forget_nll: torch.Tensor, retain_nll: torch.Tensor) -> None:
        stats["forget_nll"] += forget_nll.detach().mean().item() / self.cfg.grad_accum
        stats["retain_nll"] += retain_nll.detach().mean().item() / self.cfg.grad_accum

    def scorer_pass(self, step: int, hidden_f: torch.Tensor, q: TokenQuantities, stats: dict) -> torch.Tensor:
        """Scorer update on cached quantities (alternating), then the constant scores for the model loss.

        Returns the scorer loss to add to the model loss in the "joint" schedule, else 0.
        """
        hidden_f = hidden_f.detach()
        nll_f = q.forget_nll.detach()
        extra = torch.zeros(())
        if self.params.schedule == "alternating" and step % self.params.update_every == 0:
            parts = self.scorer_trainer.step(hidden_f, nll_f, q.forget_seq, q.n_forget_seqs)
            stats["scorer_loss"] = parts.total.item()
        elif self.params.schedule == "joint":
            parts = scorer_objective(self.scorer, hidden_f, nll_f, q.forget_seq, q.n_forget_seqs, self.params)
            stats["scorer_loss"] = parts.total.item()
            extra = parts.total
        with torch.no_grad():
            q.forget_scores = self.scorer(hidden_f)
        stats["score_mean"] = q.forget_scores.mean().item()
        stats["score_frac"] = (q.forget_scores > 0.5).float().mean().item()
        return extra

    @torch.no_grad()
    def reference_nll(self, forget_rows: list[dict]) -> torch.Tensor:
        batch = collate(forget_rows, pad_id=self.pad_id)
        hidden = last_hidden(self.reference, batch["input_ids"], batch["attention_mask"])
        return token_nll(self.reference, answer_tokens(hidden, batch["labels"]), self.cfg.loss_chunk_size)

    # ------------------------------------------------------------------ the loop
    def run(self, eval_every: int = 0, on_eval: Optional[Callable[[int], None]] = None,
            on_step: Optional[Callable[[dict], None]] = None) -> UnlearnResult:
        """Train for ``cfg.steps`` steps. ``on_step(stats)`` after every step (logging, progress);
        ``on_eval(step)`` every ``eval_every`` steps and after the last (model in eval mode)."""
        torch.manual_seed(self.cfg.seed)
        result = UnlearnResult(scorer=self.scorer)
        trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        for step in range(self.cfg.steps):
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            stats = {"step": step + 1, "forget_nll": 0.0, "retain_nll": 0.0}
            total = 0.0
            for _ in range(self.cfg.grad_accum):
                loss = self.micro_step(step, stats) / self.cfg.grad_accum
                loss.backward()
                total += loss.item()
            if not math.isfinite(total):
                raise FloatingPointError(f"non-finite loss {total} at step {step + 1}")
            if self.cfg.max_grad_norm > 0:
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(trainable, self.cfg.max_grad_norm).item()
            stats["lr"] = self.schedule.get_last_lr()[0]
            self.optimizer.step()
            self.schedule.step()
            stats["loss"] = total
            result.history.append(stats)
            if on_step:
                on_step(stats)
            done = step + 1
            if on_eval and ((eval_every and done % eval_every == 0) or done == self.cfg.steps):
                self.model.eval()
                on_eval(done)
        self.model.eval()
        return result
