"""The logit transform of a Hugging Face causal LM: what its ``forward`` does to ``z = h·Wᵀ (+ b)``
after the LM head, as a :class:`~atwu_kernels.transform.LogitTransform` (``t = c·tanh(s·z/c)``).

Read from the model's config, by family (transformers 4.46–5.x source):

==========================================================  =====================================
family (``config.model_type``)                              logits
==========================================================  =====================================
Gemma-2, Gemma-3 text, VaultGemma, NanoChat, …              ``c·tanh(z/c)``, ``c = final_logit_softcapping``
RecurrentGemma                                              ``c·tanh(z/c)``, ``c = logits_soft_cap``
Cohere, Cohere2, Cohere2-MoE                                ``z · logit_scale``
Granite, GraniteMoE, GraniteMoE-shared/-hybrid              ``z / logits_scaling``
HyperCLOVAX                                                 ``z · logits_scaling``
Falcon-H1                                                   ``z · lm_head_multiplier``
the rest (Llama, Mistral, Qwen, Phi, GPT-2, OPT, …)         ``z``
==========================================================  =====================================

A config that carries a transform attribute this table does not place (``logits_scaling`` in an
unknown family: divide or multiply?) raises :class:`UnknownLogitTransform` instead of guessing. The
multimodal Gemma-3 (``Gemma3ForConditionalGeneration``) keeps its cap in ``text_config`` and does not
apply it, so only the top-level config is read. A family that transforms its logits in a way no
config attribute reveals can only be caught by comparing with the model's own ``logits``
(``atwu_fast`` does so once per loaded model).
"""

from __future__ import annotations

from .transform import LogitTransform

SOFTCAP_ATTRIBUTES = ("final_logit_softcapping", "logits_soft_cap")
# attribute -> {model_type prefix: +1 multiply / -1 divide}; "" matches every family
SCALE_ATTRIBUTES: dict[str, dict[str, int]] = {
    "logit_scale": {"": +1},
    "logits_scaling": {"granite": -1, "hyperclovax": +1},
    "lm_head_multiplier": {"falcon_h1": +1},
}


class UnknownLogitTransform(ValueError):
    """The config names a logit transform whose direction or meaning is unknown for its family."""


def _direction(attribute: str, model_type: str) -> int | None:
    rules = SCALE_ATTRIBUTES[attribute]
    matches = [prefix for prefix in rules if model_type.startswith(prefix)]
    return rules[max(matches, key=len)] if matches else None


def model_logit_transform(model) -> LogitTransform:
    """The transform ``model`` applies to its LM head's output (see the module docstring)."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", ""))
    scale = 1.0
    for attribute in SCALE_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if value is None or float(value) == 1.0:
            continue
        direction = _direction(attribute, model_type)
        if direction is None:
            raise UnknownLogitTransform(
                f"model family '{model_type}' ({type(model).__name__}) sets {attribute}={value}, and how it "
                "applies to the logits is unknown for this family")
        scale = scale * float(value) if direction > 0 else scale / float(value)
    softcap = next((getattr(config, a) for a in SOFTCAP_ATTRIBUTES if getattr(config, a, None) is not None), None)
    return LogitTransform.build(None if scale == 1.0 else scale, softcap)
