"""ATWU's scorer inside the unlearning loop: created beside the hidden states, optionally pre-trained
on the target model, stepped on the quantities of the model's own forward, and checkpointed.

Per micro-batch (alternating schedule): on scorer-update steps the scorer takes one SGD step on the
detached hidden rows and NLL of the forget tokens; then the model step reads its scores as
constants. Through the fused head (``train.fused_head``, the default) the NLL, the scores, the
loss and its gradients come from one call over the hidden states; on scorer-update steps a
forward-only NLL pass (2NDV) precedes it, because the scorer must step before the model's scores
are taken and its objective needs ℓ. The unfused path gives the same loss and gradients.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from atwu_kernels import atwu_head

from ...model.distributed import run_on, split_rows
from ...model.tokens import forward_answer_tokens, lm_head, logit_transform, token_nll
from ..base import TokenQuantities, TrainingHooks
from .scorer import (
    LinearScorer,
    ScorerNorms,
    ScorerTrainer,
    mean_rescale_factor,
    pretrain_scorer,
    rescale_to_mean,
    scorer_objective,
)

SCORER_FILE = "scorer.safetensors"


def row_key(row: dict) -> tuple:
    """An encoded row's identity for cached per-token values: its token ids and answer labels."""
    return tuple(row["input_ids"]), tuple(row["labels"])


class ScorerHooks(TrainingHooks):
    """The learned scorer g = σ(wᵀh + b) of one ATWU run (``params``: the ``atwu`` section as the
    variant runs it)."""

    def __init__(self, params, fused: bool = True):
        self.params = params
        self.fused = fused  # ATWU's own loss may come from the fused head; a plug-in's loss is another method's
        self.scorer: Optional[LinearScorer] = None
        self.trainer: Optional[ScorerTrainer] = None
        self.pretrain_losses: list[float] = []
        self.target_nll: Optional[list[Tensor]] = None  # per forget row, with scorer_labels 'target'
        self.target_logits: Optional[dict] = None  # row key -> its tokens' scorer logits, with score_from 'target'

    # ------------------------------------------------------------------ lifecycle
    def setup(self, loop) -> list[dict]:
        params = self.params
        weight = loop.model.get_output_embeddings().weight
        self.scorer = LinearScorer(weight.shape[1], params.init_score).to(weight.device)  # beside the hidden states
        if params.pretrain_steps or "target" in (params.scorer_labels, params.score_from):
            h, nll, seq, n_retain_rows = self.target_tokens(loop)
            is_forget = seq < len(loop.forget)
            if params.scorer_labels == "target":
                self.target_nll = [part.to(nll.device)
                                   for (part,) in split_rows(seq[is_forget], len(loop.forget), nll[is_forget])]
            if params.pretrain_steps:
                self.pretrain_losses = pretrain_scorer(
                    self.scorer, params, h[is_forget], nll[is_forget], seq[is_forget], len(loop.forget),
                    h[~is_forget] if n_retain_rows else None, params.pretrain_steps)
            if params.score_from == "target":
                with torch.no_grad():
                    logits = self.scorer.logits(h[is_forget]) * params.score_sharpness
                parts = split_rows(seq[is_forget], len(loop.forget), logits)
                self.target_logits = {row_key(row): part.to(logits.device) for row, (part,) in zip(loop.forget, parts)}
                self.scorer.requires_grad_(False)
                return []
        if params.schedule == "alternating":
            updates = math.ceil(loop.cfg.steps / params.update_every) * loop.cfg.grad_accum
            self.trainer = ScorerTrainer(self.scorer, params, updates)
        elif params.schedule == "joint":
            return [{"params": list(self.scorer.parameters()), "weight_decay": 0.0}]
        else:
            self.scorer.requires_grad_(False)
        return []

    def target_tokens(self, loop) -> tuple[Tensor, Tensor, Tensor, int]:
        """The not yet unlearned model's answer tokens of every forget row and, when the scorer is
        pre-trained, of the first ``pretrain_retain_rows`` retain rows: the score-position hidden rows,
        the NLL and each token's row (forget rows first), from no-grad forwards of micro-batch size,
        detached; and the number of retain rows."""
        params, cfg = self.params, loop.cfg
        retain_rows = loop.retain[:params.pretrain_retain_rows] if params.pretrain_steps else []
        rows = loop.forget + retain_rows
        chunk = max(cfg.forget_batch_size, cfg.retain_batch_size)

        def target_tokens(model):
            tokens, _ = forward_answer_tokens(model, batch)
            return tokens.hidden(params.score_position).detach(), token_nll(model, tokens, cfg.loss_chunk_size), tokens.seq

        hidden, nlls, seqs = [], [], []
        with torch.no_grad():
            was_training = loop.model.training
            loop.model.eval()
            for start in range(0, len(rows), chunk):  # every rank: the same rows, the same forwards
                batch = loop.batch(rows[start:start + chunk])
                h_part, nll_part, seq_part = run_on(loop.model, target_tokens)
                hidden.append(h_part)
                nlls.append(nll_part)
                seqs.append(seq_part + start)
            loop.model.train(was_training)
        return torch.cat(hidden), torch.cat(nlls).detach().float(), torch.cat(seqs), len(retain_rows)

    # ------------------------------------------------------------------ per micro-batch
    def after_forward(self, loop, step: int, tokens, is_forget: Tensor, q: TokenQuantities,
                      stats: dict) -> Optional[Tensor]:
        """The fused head: NLL, scores, loss and gradients from one call over the hidden states."""
        if not (self.fused and loop.cfg.fused_head):
            return None
        params = self.params
        weight, bias = lm_head(loop.model)
        h_score = tokens.hidden(params.score_position).detach()
        scorer_weight, scorer_bias = self.scorer.weight, self.scorer.bias
        if self.target_logits is not None:  # cached logits z as a one-column "hidden state": σ(1·z + 0) = g
            h_score = torch.zeros(h_score.shape[0], 1, dtype=torch.float32, device=h_score.device)
            h_score[is_forget, 0] = self.cached_logits([loop.forget[i] for i in loop.forget_indices])
            scorer_weight, scorer_bias = torch.ones_like(scorer_weight[:1]), torch.zeros_like(scorer_bias)
        h_forget = h_score[is_forget]
        extra = torch.zeros(())
        if self.target_logits is None and params.schedule == "alternating" and step % params.update_every == 0:
            if self.target_nll is None:  # the scorer reads the model's NLL: one forward-only pass first
                with torch.no_grad():
                    q.forget_nll = token_nll(loop.model, tokens, loop.cfg.loss_chunk_size)[is_forget]
            extra = self.scorer_pass(loop, step, h_forget, q, stats, h_score[~is_forget])
        scale = None
        if params.score_mean_target is not None:
            with torch.no_grad():
                scores = torch.sigmoid(h_forget.float() @ scorer_weight + scorer_bias)
                scale = mean_rescale_factor(scores, params.score_mean_target, q.n_forget,
                                            loop.dist.all_reduce_sum if loop.dist.enabled else None)
        out = atwu_head(tokens.hidden_pred, weight, tokens.targets, is_forget, scorer_weight, scorer_bias,
                        score_hidden=h_score, alpha=params.alpha, gamma=params.gamma, beta=params.beta,
                        saturation=params.saturation, score_scale=scale, bias=bias,
                        chunk_size=loop.cfg.loss_chunk_size, n_forget=q.n_forget, n_retain=q.n_retain,
                        **logit_transform(loop.model))
        if params.schedule != "alternating" and self.target_logits is None:
            q.forget_nll = out.nll[is_forget]
            extra = self.scorer_pass(loop, step, h_forget, q, stats, h_score[~is_forget])
        loop.record_nll(stats, out.nll[is_forget], out.nll[~is_forget])
        stats["score_mean"] = out.scores[is_forget].mean().item()
        stats["score_frac"] = (out.scores[is_forget] > 0.5).float().mean().item()
        return out.loss + extra

    def before_loss(self, loop, step: int, tokens, is_forget: Tensor, q: TokenQuantities, stats: dict) -> Tensor:
        h_score = tokens.hidden(self.params.score_position)
        return self.scorer_pass(loop, step, h_score[is_forget], q, stats, h_score[~is_forget])

    def scorer_pass(self, loop, step: int, hidden_f: Tensor, q: TokenQuantities, stats: dict,
                    hidden_r: Optional[Tensor] = None) -> Tensor:
        """Scorer update on cached quantities (alternating), then the constant scores for the model loss.

        ``hidden_r``: the retain tokens' hidden rows at the score position (the contrast term).
        Returns the scorer loss to add to the model loss in the "joint" schedule, else 0.
        """
        params, dist = self.params, loop.dist
        if self.target_logits is not None:
            q.forget_weights = torch.sigmoid(self.cached_logits([loop.forget[i] for i in loop.forget_indices]))
            stats["score_mean"] = q.forget_weights.mean().item()
            stats["score_frac"] = (q.forget_weights > 0.5).float().mean().item()
            return torch.zeros(())
        hidden_f = hidden_f.detach()
        hidden_r = hidden_r.detach() if hidden_r is not None else None
        nll_f = self.scorer_nll(loop, q)
        extra = torch.zeros(())
        norms = None
        if dist.enabled:
            norms = ScorerNorms(q.nf(), q.nr(), q.nseq(), dist.world, dist.all_reduce_sum)
        if params.schedule == "alternating" and step % params.update_every == 0:
            parts = self.trainer.step(hidden_f, nll_f, q.forget_seq, q.n_forget_seqs, hidden_r, norms)
            stats["scorer_loss"] = parts.total.item()
        elif params.schedule == "joint":
            parts = scorer_objective(self.scorer, hidden_f, nll_f, q.forget_seq, q.n_forget_seqs, params,
                                     hidden_retain=hidden_r, norms=norms)
            stats["scorer_loss"] = parts.total.item()
            extra = parts.total
        with torch.no_grad():
            q.forget_weights = self.scorer(hidden_f)
        stats["score_mean"] = q.forget_weights.mean().item()
        stats["score_frac"] = (q.forget_weights > 0.5).float().mean().item()
        if params.score_mean_target is not None:  # the model step's scores (the scorer saw the raw g)
            q.forget_weights = rescale_to_mean(q.forget_weights, params.score_mean_target, q.n_forget,
                                              dist.all_reduce_sum if dist.enabled else None)
        return extra

    def cached_logits(self, rows: list[dict]) -> Tensor:
        """The cached target-model scorer logits of encoded forget ``rows``, in token order."""
        return torch.cat([self.target_logits[row_key(r)] for r in rows])

    def scorer_nll(self, loop, q: TokenQuantities) -> Tensor:
        """The per-token NLL the scorer objective reads: the model's (``q.forget_nll``), or with
        ``scorer_labels`` 'target' the target model's for the micro-batch's forget rows, in token order."""
        if self.target_nll is None:
            return q.forget_nll.detach()
        nll = torch.cat([self.target_nll[i] for i in loop.forget_indices])
        if nll.shape[0] != q.forget_seq.shape[0]:
            raise RuntimeError(f"cached target NLL has {nll.shape[0]} tokens for a micro-batch of "
                               f"{q.forget_seq.shape[0]} forget tokens")
        return nll

    def before_model_step(self, loop) -> None:
        if loop.dist.enabled and self.params.schedule == "joint":
            for p in self.scorer.parameters():  # not inside DDP: average its gradient by hand
                loop.dist.all_reduce_sum(p.grad).div_(loop.dist.world)

    # ------------------------------------------------------------------ evaluation, checkpoints, outputs
    def token_weights(self, tokens, rows) -> Tensor:
        if self.target_logits is not None and all(row_key(r) in self.target_logits for r in rows):
            return torch.sigmoid(self.cached_logits(rows))
        return self.scorer(tokens.hidden(self.params.score_position)).detach()

    def optimised_modules(self) -> dict[str, torch.nn.Module]:
        return {"scorer": self.scorer} if self.params.schedule == "joint" else {}

    def state_dict(self) -> dict:
        state = {"scorer": self.scorer.state_dict()}
        if self.trainer is not None:
            state.update(scorer_optimizer=self.trainer.optimizer.state_dict(),
                         scorer_schedule=self.trainer.schedule.state_dict(), scorer_updates=self.trainer.updates)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.scorer.load_state_dict(state["scorer"])
        if self.trainer is not None:
            self.trainer.optimizer.load_state_dict(state["scorer_optimizer"])
            self.trainer.schedule.load_state_dict(state["scorer_schedule"])
            self.trainer.updates = state["scorer_updates"]

    def save(self, directory) -> None:
        """``scorer.safetensors``: ``weight`` [D] and ``bias``."""
        from pathlib import Path

        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.scorer.state_dict().items()},
                  str(Path(directory) / SCORER_FILE))
