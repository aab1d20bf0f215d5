"""The predicted peak GPU memory of one unlearning step, by component (``python -m atwu_fast.plan``).

The model is built from its transformers config on the meta device (no weights are allocated or
downloaded), so parameter counts are exact, tied embeddings included. Notation: ``P`` parameters,
``b`` bytes per weight (bf16/fp16 2, fp32 4), ``L`` layers, ``D`` hidden size, ``Hq``/``Hkv``
query/key-value heads of size ``hd``, ``I`` MLP width, ``V`` vocabulary, ``n = batch × seq_len``
tokens per micro-batch (forget + retain rows, padded), ``N = answer_frac × n`` answer tokens (those
the LM head sees), ``C = loss_chunk_size``, ``r`` the LoRA rank.

Where the sizes come from (any causal-LM family: Llama, GPT-2, OPT, Falcon, GPT-J, BLOOM, multimodal
Gemma-3, ...). From the instantiated module tree, exact for every family: ``P`` (shared matrices
once), ``L`` (the decoder blocks, :func:`atwu_fast.model.lora.decoder_blocks`), ``V`` and the head's
input width ``D_head`` (the LM head's weight, ``V × D_head``; ``= D`` except e.g. OPT-350m's
projected head), tied embeddings (the head's weight *is* the input embedding's), and the LoRA
modules with their shapes (:func:`atwu_fast.model.lora.adapted_modules`: every ``Linear`` and
transformers ``Conv1D`` of the decoder blocks by default, or those ``lora_targets`` name; a
``Conv1D`` weight is ``[in, out]``, transposed against ``Linear``). From the text config
(``config.get_text_config()``) with the usual aliases: ``D`` = ``hidden_size``/``n_embd``/``d_model``,
``Hq`` = ``num_attention_heads``/``n_head``, ``Hkv`` = ``num_key_value_heads``/``num_kv_heads``
(default ``Hq``), ``hd`` = ``head_dim`` (default ``D / Hq``), ``I`` = ``intermediate_size``/
``ffn_dim``/``n_inner``/``ffn_hidden_size`` (default ``4·D``).

Hence weights, gradients, optimizer state (and their FSDP shards), the LoRA adapters and the loss
head are exact for every family. The activation formulas below are exact for the Llama block layout
(pre-RMSNorm, separate q/k/v/o, SwiGLU MLP; the layout of Mistral, Qwen2/3, OLMo, Granite, ...,
measured in tests/plan/test_plan.py) and estimates for other layouts: LayerNorm (GPT-2, OPT,
BLOOM, Falcon, GPT-J, NeoX) saves its input, mean and rstd rather than an fp32 copy; a two-linear
GELU MLP saves ``2·b·n·I`` rather than SwiGLU's ``3·b·n·I`` (an over-estimate); parallel blocks
(GPT-J, NeoX, Falcon) have one norm rather than two; fused q/k/v linears and extra norms
(Gemma's four, Qwen3's q/k norms) are not modelled; hybrid blocks (Falcon-H1's Mamba) and MoE
experts are sized as a dense layer of width ``I``. With LoRA on non-Llama module names each
adapter is counted with its own fp32 input copy (when b = 4 an upper bound).

Components (bytes)
------------------
weights
    ``b·P`` for the model (shared tied matrices once) ``+ 4·P_lora`` (peft keeps adapters in fp32).
reference weights
    A second ``b·P`` only for methods with a reference model (NPO) without LoRA; with LoRA the
    reference is the adapter-disabled base (0 bytes).
gradients
    One gradient per trainable tensor in its dtype: ``b·P`` (full fine-tuning) or ``4·P_lora``.
optimizer state (:func:`atwu_fast.train.optim.state_bytes_per_param`, per trainable tensor of ``k`` values)
    ``adamw``: ``2·b_param·k`` (torch keeps exp_avg and exp_avg_sq in the parameter's dtype);
    ``adamw_8bit``/``paged_adamw_8bit``: ``2·k + 8·⌈k/256⌉`` (two uint8 states and an fp32 absmax per
    256-block each), but ``8·k`` for tensors under 4096 values (norm weights). Paged states can spill
    to host RAM; the prediction counts them on the GPU (the steady state).
optimizer step temporaries
    ``adamw`` (foreach): one state-sized temporary (``b_param·P_trainable``, the ``sqrt(v)`` list);
    bitsandbytes updates each tensor in place (0).
activations (saved for backward; measured against torch's saved-tensor hooks in tests/plan/test_plan.py)
    Per decoder layer, with trainable linears (full fine-tuning), HF Llama in dtype ``b``:

    * 2 RMSNorms, each: fp32 input ``4nD`` (the input itself when b = 4), normalised output ``b·nD``,
      ``rsqrt`` ``4n``, and its output (the next linears' input) ``b·nD``;
    * ``down_proj``'s input ``b·nI``;
    * attention: q, k, v after RoPE ``b·n·hd·(Hq + 2·Hkv_eff)``, SDPA/FA2 output ``b·n·Hq·hd``,
      log-sum-exp ``4·n·Hq`` (the output is already ``o_proj``'s input). ``Hkv_eff = Hq`` for SDPA on
      padded batches (transformers repeats k/v when a mask is present), ``Hkv`` for FlashAttention-2;
    * MLP: gate, SiLU(gate), up and their product ``4·b·n·I``.

    With LoRA the frozen base linears and norm weights save nothing for their weight gradient (a
    norm keeps ``4nD + 4n``); each adapted module saves its input cast to fp32 (a ``4·n·in`` copy per
    module when b < 4; when b = 4 q/k/v share one ``4nD`` input, gate/up another, o_proj reads the
    saved attention output, down_proj ``4nI``) and the rank-r intermediate ``4·n·r``.

    Gradient checkpointing keeps only each layer's input ``b·nD`` per layer and recomputes one
    layer at a time in backward, so ``A_ckpt = L·b·nD + A_layer``. Both variants are reported.
    Plus the final norm as above and the answer rows gathered for the head (``b·N·D_head``).
loss head (this engine's chunked fused head, :mod:`atwu_kernels`, never ``N × V`` logits; ``D`` is ``D_head`` here)
    One ``C × V`` logits chunk in dtype ``b`` (+ one 16 MiB fp32 scratch on the PyTorch path);
    the head's input gradient ``b·N·D``. When the LM head is trained (full fine-tuning), its weight
    gradient leaves the forward in the weight's dtype (``b·V·D``, alive until the backward scales it
    in place). With b < 4 it is summed in an fp32 accumulator (``4·V·D``) when there are several
    chunks (on CUDA inside the GEMM) or off CUDA, where each chunk's ``b·V·D`` product is added to it.
scorer (ATWU variants)
    ``w, b`` in fp32 with gradient and SGD momentum: ``3·4·(D+1)``, plus its detached input rows
    ``b·N·D`` (the hidden states at the scored positions).

several GPUs (``--ranks K``, numbers per GPU, ``--batch`` rows per GPU)
    DDP: ``+ b·P_train`` gradient buckets (DDP's reducer keeps flat copies of the gradients).
    FSDP (FSDP2, full fine-tuning with AdamW): weights, gradients, optimizer state and its step
    temporaries divided by ``K``; plus the all-gathered working set ``b·(P_root + 2·P_layer)`` (the
    root unit — embeddings, final norm, LM head — for the whole step, the running decoder layer and
    the prefetched next one) and, in backward, unsharded gradients ``b·(P_root + P_layer)`` before
    their reduce-scatter. An NPO reference without LoRA stays a whole copy on every rank.

Peak
----
Memory is highest at one of three moments (persistent = weights + reference + optimizer state
(after the first step) + scorer):

* head backward: persistent + activations + loss head (the LM head's dW and its accumulator
  coexist with every saved activation);
* end of backward: persistent + gradients + one recomputed layer (checkpointing) + with tied
  embeddings the embedding's dense ``b·V·D`` gradient before it is added to the head's;
* optimizer step: persistent + gradients + step temporaries.

Gradients accumulate while activations are freed layer by layer; both change linearly with depth,
so their sum peaks at an end: the maximum of the three moments is the predicted
``torch.cuda.max_memory_allocated``. Whether it fits: ``peak × 1.05`` (allocator fragmentation)
plus ``0.75 GiB`` (CUDA context, cuBLAS workspace; not seen by ``max_memory_allocated``) against
``--gpu-gb`` GiB. ``benchmarks/gpu_memory_check.py`` measures a real step and compares.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..methods import DEFAULT_METHOD, METHODS
from ..model.lora import adapted_modules, decoder_blocks
from ..train.optim import OPTIMIZERS, state_bytes_per_param

GIB = 1024 ** 3
FRAGMENTATION = 1.05
CUDA_OVERHEAD_GIB = 0.75
TORCH_SCRATCH_BYTES = 16 << 20  # atwu_kernels.torch_impl.SCRATCH_BYTES: the PyTorch path's one fp32 temporary
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class PlanInput:
    model: str
    method: str = DEFAULT_METHOD  # the unlearning CLI's default method
    lora_rank: int = 0
    lora_targets: list[str] = field(default_factory=list)  # module name suffixes; empty: every linear of the decoder blocks
    optim: str = "adamw"
    dtype: str = "bfloat16"
    seq_len: int = 512
    batch: int = 8
    answer_frac: float = 1.0
    gradient_checkpointing: bool = False
    attn_implementation: str = "flash_attention_2"
    loss_chunk_size: int = 1024
    gpu_gb: float = 24.0
    device: str = "cuda"  # the loss head's temporaries: Triton on CUDA, chunked PyTorch elsewhere
    ranks: int = 1  # data-parallel ranks (GPUs); ``batch`` is per rank
    parallel: str = "ddp"  # ddp | fsdp (the engine's --efficiency.parallel)


@dataclass
class Plan:
    inputs: dict
    architecture: dict
    params: dict
    components: dict  # bytes
    moments: dict  # bytes
    peak_bytes: int
    required_bytes: int
    fits: bool

    def gib(self, key: str) -> float:
        return self.components[key] / GIB


def load_config(name_or_path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path)


def meta_model(config):
    """The causal LM built on the meta device: shapes and parameter sharing, no storage."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _first(config, *names):
    """The first of ``names`` that ``config`` sets (not None), else None."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def architecture(config, model=None) -> dict:
    """The sizes the formulas use (see the module docstring for which are exact): layers, vocabulary,
    head width and tying from ``model``'s module tree (built on the meta device when not given), the
    block's widths from the text config with the usual aliases."""
    model = model if model is not None else meta_model(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    _, blocks = decoder_blocks(model)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    vocab, head_width = head.weight.shape
    hidden = _first(text, "hidden_size", "n_embd", "d_model") or embedding.weight.shape[1]
    heads = _first(text, "num_attention_heads", "n_head", "num_heads") or 1
    return {
        "hidden_size": hidden,
        "layers": len(blocks),
        "heads": heads,
        "kv_heads": _first(text, "num_key_value_heads", "num_kv_heads") or heads,
        "head_dim": _first(text, "head_dim") or hidden // heads,
        "intermediate_size": _first(text, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size") or 4 * hidden,
        "vocab_size": vocab,
        "head_width": head_width,
        "tied_embeddings": head.weight is embedding.weight,
    }


def lora_modules(model, targets=()) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every module LoRA adapts (:func:`adapted_modules`: the
    decoder blocks' Linear and Conv1D modules, all of them or those ``targets`` name)."""
    found = []
    for name, module in adapted_modules(model, targets).items():
        if type(module).__name__ == "Conv1D":  # transformers' Conv1D (GPT-2): weight [in, out]
            fan_in, fan_out = module.weight.shape
        else:  # Linear: weight [out, in]
            fan_out, fan_in = module.weight.shape
        found.append((name, int(fan_in), int(fan_out)))
    return found


def _layer_activations(a: dict, n: int, b: int, lora: list[tuple[str, int]] | None, r: int, kv_eff: int) -> int:
    """Bytes one decoder layer saves for backward (see the module docstring); ``lora``: the adapted
    linears of one layer as (suffix, in_features), None for full fine-tuning."""
    D, ffn, hq, hd = a["hidden_size"], a["intermediate_size"], a["heads"], a["head_dim"]
    attn = b * n * hd * (hq + 2 * kv_eff) + b * n * hq * hd + 4 * n * hq  # q, k, v, out (= o_proj input), lse
    mlp = 3 * b * n * ffn  # gate, silu(gate), up (saved by the SiLU and the product)
    if lora is None:  # trainable norm weights and linears: the norms' and linears' inputs are saved
        norm = 4 * n * D + b * n * D + 4 * n  # fp32 input (the input itself when b = 4), normalised, rsqrt
        linear_inputs = 2 * b * n * D + b * n * ffn  # q/k/v and gate/up inputs, down_proj's input
        return 2 * norm + attn + mlp + linear_inputs
    norm = 4 * n * D + 4 * n  # frozen norm weight: the normalised output is not saved
    adapters = sum(4 * n * r for _ in lora)  # A·x, saved by B
    if b < 4:  # every adapter casts its input to fp32: one copy each
        adapters += sum(4 * n * fan_in for _, fan_in in lora)
    else:  # no cast: q/k/v share one input, gate/up another, o_proj's is the attention output
        names = {name for name, _ in lora}
        adapters += 4 * n * D * (bool(names & {"q_proj", "k_proj", "v_proj"}) + bool(names & {"gate_proj", "up_proj"}))
        adapters += 4 * n * ffn * ("down_proj" in names)
        # other layouts' module names: one input each (an upper bound; shared inputs are not modelled)
        adapters += sum(4 * n * fan_in for name, fan_in in lora if name not in LLAMA_LINEARS)
    return 2 * norm + attn + mlp + adapters


def saved_tensor_bytes(fn, exclude=()) -> tuple[int, object]:
    """Run ``fn()`` and return the bytes of distinct storages autograd saved for backward (minus
    the ``exclude`` tensors, e.g. parameters), and ``fn``'s result. Used to check the formulas."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and t.device.type != "meta":
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def plan(inp: PlanInput, config=None) -> Plan:
    if inp.optim not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{inp.optim}'; choose from {', '.join(OPTIMIZERS)}")
    if inp.method not in METHODS:
        raise ValueError(f"unknown method '{inp.method}'; choose from {', '.join(METHODS)}")
    if inp.dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype '{inp.dtype}'; choose from {', '.join(DTYPE_BYTES)}")
    if inp.parallel not in ("ddp", "fsdp") or inp.ranks < 1:
        raise ValueError("parallel must be ddp or fsdp and ranks >= 1")
    if inp.parallel == "fsdp" and (inp.lora_rank or inp.optim != "adamw"):
        raise ValueError("the engine's FSDP takes full fine-tuning with adamw (no LoRA, no 8-bit optimizers)")
    method = METHODS[inp.method]
    config = config if config is not None else load_config(inp.model)
    model = meta_model(config)
    a = architecture(config, model)
    b = DTYPE_BYTES[inp.dtype]
    D, V, L, Dh = a["hidden_size"], a["vocab_size"], a["layers"], a["head_width"]
    n = inp.batch * inp.seq_len
    N = math.ceil(inp.answer_frac * n)
    C = min(inp.loss_chunk_size, max(N, 1))

    tensors = {id(p): p for p in model.parameters()}.values()  # tied matrices once
    P = sum(p.numel() for p in tensors)
    head = model.get_output_embeddings().weight
    head_trained = inp.lora_rank == 0
    lora = lora_modules(model, inp.lora_targets) if inp.lora_rank else []
    if inp.lora_rank and not lora:
        raise ValueError(f"{type(model).__name__} ({inp.model}) has no Linear or Conv1D module in its decoder blocks for LoRA")
    r = inp.lora_rank
    lora_shapes = [(r, fi) for _, fi, _ in lora] + [(fo, r) for _, _, fo in lora]
    P_lora = sum(x * y for x, y in lora_shapes)
    if inp.lora_rank:
        trainable = [(x * y, 4) for x, y in lora_shapes]
    else:
        trainable = [(p.numel(), b) for p in tensors]
    P_train = sum(k for k, _ in trainable)

    c: dict[str, int] = {}
    c["weights"] = b * P + 4 * P_lora
    c["reference_weights"] = b * P if (method.needs_reference and not inp.lora_rank) else 0
    c["gradients"] = sum(k * pb for k, pb in trainable)
    c["optimizer_state"] = int(sum(state_bytes_per_param(inp.optim, k, pb) for k, pb in trainable))
    c["optimizer_step_temporaries"] = sum(k * pb for k, pb in trainable) if inp.optim == "adamw" else 0
    K = inp.ranks
    fsdp = inp.parallel == "fsdp" and K > 1
    # DDP's reducer keeps gradient-sized flat buckets beside the gradients (gradient_as_bucket_view off)
    c["ddp_buckets"] = c["gradients"] if (inp.parallel == "ddp" and K > 1) else 0
    c["fsdp_unsharded_params"] = c["fsdp_unsharded_grads"] = 0
    P_root = 0
    if fsdp:  # FSDP2: every rank holds 1/K of each parameter, its gradient and its AdamW state
        from ..model.distributed import shard_units

        P_layer = max(sum(p.numel() for p in unit.parameters()) for unit in shard_units(model))
        P_root = P - sum(sum(p.numel() for p in unit.parameters()) for unit in shard_units(model))
        for key in ("weights", "gradients", "optimizer_state", "optimizer_step_temporaries"):
            c[key] = math.ceil(c[key] / K)
        # all-gathered: the root unit (embeddings, final norm, LM head) for the whole step, plus the
        # running decoder layer and the one prefetched after it
        c["fsdp_unsharded_params"] = b * (P_root + 2 * P_layer)
        # unsharded gradients before their reduce-scatter: the root's (until the end of backward) and one layer's
        c["fsdp_unsharded_grads"] = b * (P_root + P_layer)

    kv_eff = a["kv_heads"] if inp.attn_implementation == "flash_attention_2" else a["heads"]
    per_layer_lora = None
    if lora:  # the first decoder block's adapted modules, as (name suffix, in_features)
        first = decoder_blocks(model)[0] + ".0."
        per_layer_lora = [(name.rsplit(".", 1)[-1], fi) for name, fi, _ in lora if name.startswith(first)]
    layer = _layer_activations(a, n, b, per_layer_lora, r, kv_eff)
    final_norm = 4 * n * D + b * n * D + 4 * n
    gathered = b * N * Dh
    c["activations_no_checkpointing"] = L * layer + final_norm + gathered
    c["activations_checkpointing"] = L * b * n * D + layer + final_norm + gathered
    c["activations"] = c["activations_checkpointing" if inp.gradient_checkpointing else "activations_no_checkpointing"]

    chunk = C * V * b + (TORCH_SCRATCH_BYTES if inp.device != "cuda" else 0)
    head_grad_h = b * N * Dh
    head_dw = 0
    if head_trained:  # dW leaves the forward in the parameter dtype; the backward scales it in place
        several = math.ceil(N / C) > 1
        head_dw = b * V * Dh
        if b < 4 and (several or inp.device != "cuda"):
            # an fp32 accumulator across chunks (inside the GEMM on CUDA); off CUDA each chunk's
            # low-precision product is added into it
            head_dw += 4 * V * Dh + (b * V * Dh if inp.device != "cuda" else 0)
    c["loss_head"] = chunk + head_grad_h + head_dw
    c["scorer"] = (3 * 4 * (Dh + 1) + b * N * Dh) if method.learns_weights else 0

    persistent = c["weights"] + c["reference_weights"] + c["optimizer_state"] + c["scorer"] + c["ddp_buckets"]
    recompute = layer if inp.gradient_checkpointing else 0
    tied_extra = b * V * Dh if (head_trained and a["tied_embeddings"]) else 0
    moments = {
        "head_backward": persistent + c["activations"] + c["loss_head"] + c["fsdp_unsharded_params"],
        "end_of_backward": persistent + c["gradients"] + recompute + tied_extra + c["fsdp_unsharded_grads"] + b * P_root,
        "optimizer_step": persistent + c["gradients"] + c["optimizer_step_temporaries"],
    }
    peak = max(moments.values())
    required = int(peak * FRAGMENTATION + CUDA_OVERHEAD_GIB * GIB)
    params = {"total": P, "trainable": P_train, "lora": P_lora, "lm_head": head.numel(),
              "lm_head_trained": head_trained}
    return Plan(inputs=asdict(inp), architecture=a, params=params, components=c, moments=moments,
                peak_bytes=int(peak), required_bytes=required, fits=required <= inp.gpu_gb * GIB)


LABELS = [
    ("weights", "weights"),
    ("reference_weights", "reference model weights"),
    ("gradients", "gradients"),
    ("optimizer_state", "optimizer state"),
    ("optimizer_step_temporaries", "optimizer step temporaries"),
    ("activations_no_checkpointing", "activations, no checkpointing"),
    ("activations_checkpointing", "activations, checkpointing"),
    ("loss_head", "loss head (chunk x V, dW)"),
    ("scorer", "scorer"),
    ("ddp_buckets", "DDP gradient buckets"),
    ("fsdp_unsharded_params", "FSDP all-gathered parameters"),
    ("fsdp_unsharded_grads", "FSDP unsharded gradients"),
]


def format_plan(p: Plan) -> str:
    i, a, prm = p.inputs, p.architecture, p.params
    lines = [
        f"model {i['model']}: {prm['total'] / 1e9:.3f}B parameters, L={a['layers']} D={a['hidden_size']} "
        f"heads={a['heads']}/{a['kv_heads']} I={a['intermediate_size']} V={a['vocab_size']} "
        f"{'tied' if a['tied_embeddings'] else 'untied'} embeddings",
        f"method {i['method']}, {i['dtype']} weights, optim {i['optim']}, "
        + (f"LoRA r={i['lora_rank']} ({prm['trainable'] / 1e6:.1f}M trainable)" if i["lora_rank"] else "full fine-tuning")
        + f", {i['batch']} rows x {i['seq_len']} tokens, checkpointing {'on' if i['gradient_checkpointing'] else 'off'}, "
        f"{i['attn_implementation']}"
        + (f", {i['ranks']} ranks ({i['parallel']}; per-GPU numbers)" if i["ranks"] > 1 else ""),
        "",
        f"{'component':34s} {'GiB':>8s}",
    ]
    for key, label in LABELS:
        used = "" if key not in ("activations_no_checkpointing", "activations_checkpointing") else (
            "  <- used" if (key == "activations_checkpointing") == i["gradient_checkpointing"] else "")
        lines.append(f"{label:34s} {p.components[key] / GIB:8.2f}{used}")
    lines.append("")
    for key, value in p.moments.items():
        lines.append(f"{'at ' + key.replace('_', ' '):34s} {value / GIB:8.2f}")
    lines += [
        f"{'predicted peak (max_memory_allocated)':34s} {p.peak_bytes / GIB:8.2f}",
        f"{'with fragmentation + CUDA context':34s} {p.required_bytes / GIB:8.2f}",
        f"fits {i['gpu_gb']:g} GiB: {'yes' if p.fits else 'NO'}",
    ]
    return "\n".join(lines)
