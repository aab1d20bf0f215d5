"""RMU: representation misdirection (Li et al. 2024, "The WMDP Benchmark").

On forget answers the output of one decoder layer ℓ is pushed toward a fixed random direction scaled
by c; on retain answers it is held at the frozen reference's; only the MLPs of layer ℓ and the
``train_layers − 1`` layers below it train:

    L_f = (1/N_F) Σ_t w_t·mean_d (a_td − c·u_d)²,     L_r = (1/N_R) Σ_t mean_d (a_td − a^ref_td)²

with a_t the layer's output at answer token t, u a fixed random unit vector (uniform entries,
normalised; seeded) and w_t ≡ 1 or a weight source's token weights. total = γ·L_f + α·L_r. The
reference is the frozen target (with LoRA the adapter-disabled base, no second copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..config import check, option
from ..config.search import Float
from ..model.tokens import decoder
from .base import LossWeights, Method, TokenQuantities, TrainingHooks


@dataclass
class RMUParams(LossWeights):
    layer: Optional[int] = option("decoder layer whose output is steered (none: the middle one)", None)
    steering_coeff: float = option("c: the scale of the random target direction", 2.0)
    train_layers: int = option("train the MLPs of the steered layer and the layers below it, this many in all "
                               "(0: every parameter)", 3)

    def validate(self) -> None:
        check(self.train_layers >= 0, "rmu.train_layers must be >= 0")
        check(self.steering_coeff > 0, "rmu.steering_coeff must be > 0")


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = getattr(decoder(model), "layers", None)
    if layers is None:
        raise ValueError("RMU needs a decoder with a .layers list (Llama-style models)")
    return layers


def layer_output(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


class RMUHooks(TrainingHooks):
    """Freezes all but the chosen MLPs, draws the control vector, captures layer ℓ's output of every
    forward (model and reference) and hands the answer tokens' activations to the loss."""

    def __init__(self, params: RMUParams):
        self.params = params
        self.captured: Optional[Tensor] = None
        self.control: Optional[Tensor] = None

    def layer_index(self, model) -> int:
        n = len(decoder_layers(model))
        index = n // 2 if self.params.layer is None else self.params.layer
        if not 0 <= index < n:
            raise ValueError(f"rmu.layer {index} is outside the model's {n} decoder layers")
        return index

    def select_parameters(self, model) -> None:
        """Only the MLPs of the steered layer and the ``train_layers − 1`` below it train."""
        if not self.params.train_layers:
            return
        layers, index = decoder_layers(model), self.layer_index(model)
        trained = {id(p) for layer in layers[max(0, index - self.params.train_layers + 1):index + 1]
                   for p in getattr(layer, "mlp", layer).parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trained and p.requires_grad)

    def setup(self, loop) -> list[dict]:
        index = self.layer_index(loop.model)
        head = loop.model.get_output_embeddings().weight
        generator = torch.Generator().manual_seed(loop.cfg.seed)
        u = torch.rand(head.shape[1], generator=generator, dtype=torch.float32)
        self.control = (self.params.steering_coeff * u / u.norm()).to(head.device)
        modules = [decoder_layers(loop.model)[index]]
        if isinstance(loop.reference, torch.nn.Module):
            modules.append(decoder_layers(loop.reference)[index])
        for module in modules:
            module.register_forward_hook(self.capture)
        return []

    def capture(self, module, args, output) -> None:
        self.captured = layer_output(output)

    def answer_activations(self, loop, tokens) -> Tensor:
        """Layer ℓ's output at each answer token (the token's own position) of the last forward."""
        if loop.packing:
            return self.captured[0, tokens.position]
        return self.captured[tokens.seq, tokens.position]

    def after_forward(self, loop, step, tokens, is_forget, q: TokenQuantities, stats) -> None:
        """Right after the model's forward (before any reference forward reuses the capture)."""
        acts = self.answer_activations(loop, tokens)
        q.extras["act_forget"], q.extras["act_retain"] = acts[is_forget], acts[~is_forget]
        return None

    def before_loss(self, loop, step, tokens, is_forget, q: TokenQuantities, stats) -> Tensor:
        retain_rows = [loop.retain[i] for i in loop.retain_indices]
        q.extras["act_reference"] = loop.reference_forward(
            retain_rows, lambda m, t: self.answer_activations(loop, t).detach())
        q.extras["control"] = self.control
        return torch.zeros(())


def rmu_forget_loss(q: TokenQuantities, params) -> Tensor:
    acts = q.extras["act_forget"]
    per_token = (acts.float() - q.extras["control"]).pow(2).mean(-1)
    return q.weighted(per_token).sum() / q.nf()


def rmu_retain_loss(q: TokenQuantities, params) -> Tensor:
    per_token = (q.extras["act_retain"].float() - q.extras["act_reference"].float()).pow(2).mean(-1)
    return per_token.sum() / q.nr()


RMU = Method("rmu", RMUParams, rmu_forget_loss, needs_reference=True, hooks=RMUHooks, retain_loss=rmu_retain_loss,
             pluggable=True, search={"steering_coeff": Float(0.5, 20.0, log=True)}, doc="mean (a_ℓ − c·u)² on forget answers + α·mean (a_ℓ − a_ℓ^ref)² on retain answers, "
                                 "a_ℓ: layer ℓ's output, u a fixed random direction (Li et al. 2024)")
