"""Two gloo ranks on CPU reproduce the single-process run at the same global batch."""

import datetime
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atwu_fast.data.formatting import encode_qa
from atwu_fast.finetune.tiny import ModelConfig, build_tiny_llama, train_tokenizer
from atwu_fast.methods import get_method
from atwu_fast.methods.atwu.params import ATWUParams
from atwu_fast.model.distributed import (
    SINGLE,
    DistContext,
    full_state_dict,
    generation_kwargs,
    map_batches,
    shutdown,
)
from atwu_fast.model.loading import enable_gradient_checkpointing
from atwu_fast.suites.synthetic.world import SyntheticConfig, generate, tokenizer_corpus
from atwu_fast.train.config import TrainConfig
from atwu_fast.train.trainer import Unlearner
from atwu_fast.unlearn.experiment import ExperimentConfig

MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
STEPS = 4
LR = 1e-3
EPS32 = torch.finfo(torch.float32).eps


def adam_step_bound(t: int, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """The largest |m̂_t / (√v̂_t + ε)| Adam can take at step t, whatever the gradients.

    m_t = (1−β1) Σ_k β1^(t−k) g_k and v_t = (1−β2) Σ_k β2^(t−k) g_k², so by Cauchy–Schwarz
    |m_t| ≤ (1−β1) · sqrt(Σ_j (β1²/β2)^j) · sqrt(v_t / (1−β2)); the bias corrections divide m by
    (1 − β1^t) and v by (1 − β2^t). At t = 1 this is exactly 1 (the update is lr·sign(g))."""
    series = sum((beta1 ** 2 / beta2) ** j for j in range(t))
    return (1 - beta1) / (1 - beta1 ** t) * ((1 - beta2 ** t) / (1 - beta2)) ** 0.5 * series ** 0.5


def assert_adam_weights_match(got: dict, want: dict, lr: float = LR, steps: int = STEPS, tight: float = 2e-5,
                              share: float = 0.99) -> None:
    """Weights of two AdamW runs whose gradients agree up to fp32 round-off of the reduction order.

    Adam normalises each entry's step by √v, so where a gradient entry is itself round-off (≈ 0) the
    two runs may step it in different directions: each run moves an entry by at most lr·c_t at step t
    (:func:`adam_step_bound`), so no entry can differ by more than 2·lr·Σ_t c_t — the bound every entry
    must meet. Every other entry follows the same normalised steps in both runs, so nearly all entries
    (``share``) must agree to ``tight``; a real mismatch (a wrong normaliser, a missing shard) moves
    most entries, not a few, and also shows in the losses and gradients checked beside this."""
    bound = 2 * lr * sum(adam_step_bound(t) for t in range(1, steps + 1))
    close = total = 0
    for key, value in want.items():
        diff = (got[key].float() - value.float()).abs()
        assert diff.max() <= bound, (key, diff.max().item(), bound)
        close += int((diff <= tight + 1e-5 * value.abs()).sum())
        total += diff.numel()
    assert close >= share * total, (close, total)


def first_step_gradients(unlearner) -> dict:
    """The gradients the first optimiser step applies (after the all-reduce and clipping), whole
    tensors even under FSDP (a collective: every rank must call it)."""
    captured: dict = {}
    step = unlearner.optimizer.step

    def capture(*args, **kwargs):
        if not captured:
            for name, p in unlearner.model.named_parameters():
                if p.grad is not None:
                    g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                    captured[name] = g.detach().clone()
        return step(*args, **kwargs)

    unlearner.optimizer.step = capture
    return captured


def assert_gradients_match(got: dict, want: dict) -> None:
    """Two fp32 reductions of the same terms in another order: each entry differs by at most a few
    ulps of the terms' magnitude, bounded here by 2^10·ε·max|g| of the tensor (≈ 1.2e-4 relative to the
    largest entry; a wrong normaliser is off by a factor, a missing shard by a whole share)."""
    assert set(got) == set(want)
    for key, value in want.items():
        scale = value.abs().max().item()
        assert torch.allclose(got[key], value, rtol=0, atol=1024 * EPS32 * scale + 1e-12), (
            key, (got[key] - value).abs().max().item(), scale)


def build(method: str, ctx: DistContext, parallel: str = "ddp", params: dict | None = None) -> Unlearner:
    """``params``: ATWU fields, plus ``packing`` / ``checkpointing`` (memory options)."""
    torch.set_num_threads(1)
    params = dict(params or {})
    packing, checkpointing = params.pop("packing", False), params.pop("checkpointing", False)
    splits = generate(SyntheticConfig(n_forget_authors=3, n_retain_authors=4, n_holdout_authors=0, n_general=4))
    tok = train_tokenizer(tokenizer_corpus(splits), 400)
    enc = {k: [encode_qa(tok, r["question"], r["answer"], 64, r.get("spans")) for r in v] for k, v in splits.items()}
    model = build_tiny_llama(MODEL, tok, 80)
    if checkpointing:
        enable_gradient_checkpointing(model)
    reference = None
    if get_method(method).needs_reference:
        reference = build_tiny_llama(MODEL, tok, 80).requires_grad_(False)
    params = (ATWUParams(update_every=2, **params) if method.startswith("atwu")
              else get_method(method).sections(ExperimentConfig()))
    cfg = TrainConfig(steps=STEPS, forget_batch_size=4, retain_batch_size=6, lr=LR, grad_accum=2)
    return Unlearner(model, get_method(method), params, cfg, enc["forget"][:12], enc["retain"][:18], tok.pad_token_id,
                     reference=reference, dist=ctx, parallel=parallel, packing=packing,
                     forget_source=splits["forget"][:12], encode=lambda q, a: encode_qa(tok, q, a, 64))


def in_gloo_group(rank: int, world: int, init_file: str, body: Callable[..., None], *args) -> None:
    """A spawned rank: run ``body(ctx, *args)`` as one rank of a gloo group, then leave it. ``body``
    returns before the group is shut down, so its models are gone by then; the group itself must be
    gone after :func:`shutdown` (a group alive at interpreter exit can abort the process at random)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))  # a stuck collective fails, never hangs
    ctx = DistContext(rank, world)
    try:
        body(ctx, *args)
    finally:
        released = shutdown(ctx)
    assert released, "the process group outlived shutdown"


def train_and_save(ctx: DistContext, method: str, out: str, parallel: str, params: dict) -> None:
    unlearner = build(method, ctx, parallel, params)
    gradients = first_step_gradients(unlearner)
    result = unlearner.run()
    learned = getattr(unlearner.hooks, "scorer", None)
    weights = full_state_dict(unlearner.model)  # a collective under FSDP
    if ctx.is_main:
        torch.save({"losses": [h["loss"] for h in result.history], "gradients": gradients,
                    "weights": {k: v.detach().clone() for k, v in weights.items()},
                    "scorer": {k: v.detach().clone() for k, v in learned.state_dict().items()}
                    if learned is not None else {}}, out)


def run_two_ranks(method: str, tmp_path, out, parallel: str = "ddp", params: dict | None = None,
                  deadline_s: float = 300.0) -> None:
    """Spawn 2 ranks and wait for them. A rank that has written its results but does not exit within
    the deadline is terminated with a warning instead of hanging the suite (gloo teardown can hang
    if a DDP reducer is the last owner of the group; Unlearner.release_distributed prevents that)."""
    args = (2, str(tmp_path / "init"), train_and_save, method, str(out), parallel, params or {})
    context = mp.start_processes(in_gloo_group, args=args, nprocs=2, join=False, start_method="spawn")
    start = time.time()
    while not context.join(timeout=5):
        if time.time() - start > deadline_s:
            if not out.exists():
                raise AssertionError("the ranks neither finished nor wrote results in time")
            warnings.warn("distributed workers did not exit after finishing; terminated", stacklevel=1)
            for process in context.processes:
                process.kill()
            return


CASES = [("ddp", m, {}) for m in ["grad_diff", "npo", "simnpo", "wga", "atwu_frozen", "atwu", "atwu_nll", "atwu_logfit"]]
CASES += [("fsdp", "grad_diff", {}), ("fsdp", "npo", {}), ("fsdp", "atwu", {}), ("fsdp", "atwu", {"schedule": "joint"}),
          ("fsdp", "atwu_logfit", {})]  # the default method: scorer pre-training forwards through the sharded root
CASES += [("ddp", "atwu", {"packing": True}), ("fsdp", "npo", {"packing": True, "checkpointing": True}),
          ("ddp", "atwu_logfit", {"packing": True})]
CASES += [("ddp", m, {}) for m in ["rmu", "dpo", "undial", "npo+atwu"]]  # hooks' extra forwards inside DDP


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("parallel,method,params", CASES,
                         ids=["-".join([p, m, *(f"{k}={v}" for k, v in o.items())]) for p, m, o in CASES])
def test_two_gloo_ranks_equal_one_process(tmp_path, parallel, method, params):
    single = build(method, SINGLE, params=params)
    gradients = first_step_gradients(single)
    losses = [h["loss"] for h in single.run().history]
    out = tmp_path / "rank0.pt"
    run_two_ranks(method, tmp_path, out, parallel, params)
    got = torch.load(out, weights_only=True)
    assert got["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    assert_gradients_match(got["gradients"], gradients)  # the same step before the optimiser
    learned = getattr(single.hooks, "scorer", None)
    scorer = learned.state_dict() if learned is not None else {}
    if params.get("schedule") == "joint":  # the scorer is stepped by the model's AdamW
        assert_adam_weights_match(got["scorer"], scorer)
    else:  # SGD: the scorer the ranks trained (pre-training included) is the one process's
        for key, value in scorer.items():
            assert torch.allclose(got["scorer"][key], value, rtol=1e-5, atol=1e-6), (
                key, (got["scorer"][key] - value).abs().max())
    assert_adam_weights_match(got["weights"], single.model.state_dict())
    assert any(not torch.equal(v, build(method, SINGLE).model.state_dict()[k])
               for k, v in got["weights"].items())  # training moved the weights


def test_shards_cover_the_global_batch():
    batch = list(range(7))
    shards = [DistContext(r, 3).shard(batch) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert DistContext(0, 1).shard(batch) == batch


class Interrupt(Exception):
    pass


def interrupt_and_resume(ctx: DistContext, method: str, out: str, parallel: str, ckpt: str, params: dict) -> None:
    """Train until step 3 (checkpoint at step 2), stop, then resume in a fresh Unlearner."""
    first = build(method, ctx, parallel, params)
    first.cfg.checkpoint_every = 2

    def stop(stats):
        if stats["step"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        first.run(on_step=stop, checkpoint_dir=ckpt)
    second = build(method, ctx, parallel, params)
    second.cfg.checkpoint_every = 2
    steps_run: list[int] = []
    result = second.run(on_step=lambda stats: steps_run.append(stats["step"]), checkpoint_dir=ckpt, resume=True)
    weights = full_state_dict(second.model)
    if ctx.is_main:
        torch.save({"losses": [h["loss"] for h in result.history], "weights": weights, "steps_run": steps_run}, out)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("parallel, params", [("ddp", {}), ("fsdp", {}), ("fsdp", {"schedule": "joint"})])
def test_two_ranks_resume_from_checkpoint_equals_uninterrupted(tmp_path, parallel, params):
    single = build("atwu", SINGLE, params=params)
    losses = [h["loss"] for h in single.run().history]
    out = tmp_path / "rank0.pt"
    args = (2, str(tmp_path / "init"), interrupt_and_resume, "atwu", str(out), parallel, str(tmp_path / "ckpt"), params)
    mp.start_processes(in_gloo_group, args=args, nprocs=2, join=True, start_method="spawn")
    got = torch.load(out, weights_only=True)
    assert got["steps_run"] == [3, 4]  # resumed from the step-2 checkpoint
    assert got["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)  # history restored, then steps 3-4
    assert_adam_weights_match(got["weights"], single.model.state_dict())


def map_and_save(ctx: DistContext, out: str) -> None:
    seen: list[list[int]] = []

    def square(model, part):
        seen.append(list(part))
        return [x * x for x in part]

    items = list(range(7))
    model = torch.nn.Linear(2, 2)
    gathered = map_batches(model, items, 2, square, ctx=ctx)
    alone = map_batches(model, items, 2, square)  # no context: this rank maps everything
    # an FSDP-sharded model: 5 rows over 2 ranks = batches of [2, 1] and [2] rows; rank 1 must run a
    # padding forward (its own batches alone would leave rank 0's second all-gather unmatched: a hang)
    sharded = build("grad_diff", ctx, "fsdp").model
    forwards: list[int] = []

    def logits_sum(m, part):
        forwards.append(len(part))
        out = m(input_ids=torch.tensor([[1, 2, 3]] * len(part))).logits
        return [float(out[i].sum()) for i in range(len(part))]

    fsdp_rows = map_batches(sharded, list(range(5)), 2, logits_sum, ctx=ctx)
    try:  # without the run's context a sharded model's forwards would not match across ranks: refused
        map_batches(sharded, list(range(5)), 2, logits_sum)
        refused = False
    except RuntimeError:
        refused = True
    synced = (generation_kwargs(sharded, ctx), generation_kwargs(sharded), generation_kwargs(model, ctx))
    torch.save({"gathered": gathered, "alone": alone, "seen": seen, "fsdp_rows": fsdp_rows,
                "forwards": forwards, "refused": refused, "synced": synced}, f"{out}.{ctx.rank}")


@pytest.mark.slow
@pytest.mark.distributed
def test_collective_map_shards_rows_and_gathers_them_in_order(tmp_path):
    out = tmp_path / "map"
    mp.start_processes(in_gloo_group, args=(2, str(tmp_path / "init"), map_and_save, str(out)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for got in ranks:
        assert got["gathered"] == [x * x for x in range(7)]
        assert got["alone"] == [x * x for x in range(7)]
    assert ranks[0]["seen"][:2] == [[0, 1], [2, 3]] and ranks[1]["seen"][:2] == [[4, 5], [6]]  # each its shard
    assert len(ranks[0]["forwards"]) == len(ranks[1]["forwards"]) == 2  # rank 1: one batch + one padding
    assert len(ranks[0]["fsdp_rows"]) == 5 and ranks[0]["fsdp_rows"] == ranks[1]["fsdp_rows"]
    assert ranks[0]["fsdp_rows"] == pytest.approx([ranks[0]["fsdp_rows"][0]] * 5)  # same input, same logits
    for got in ranks:
        assert got["refused"]  # an FSDP model evaluated without the context raises, before any forward
        assert got["synced"] == ({"synced_gpus": True}, {}, {})


@dataclass(frozen=True)
class ThreadRank(DistContext):
    """Rank ``rank`` of ``world`` ranks that are threads of this process: the all-gather meets at a
    barrier and reads every rank's value from a shared board (no process group)."""

    board: dict = field(default_factory=dict, compare=False)
    meet: threading.Barrier | None = field(default=None, compare=False)

    def all_gather(self, value) -> list:
        self.board[self.rank] = value
        self.meet.wait(timeout=30)
        return [self.board[r] for r in range(self.world)]


def test_map_batches_shards_rows_over_the_given_context_and_gathers_them_in_order():
    items, model = list(range(7)), torch.nn.Linear(2, 2)
    board, meet = {}, threading.Barrier(2)
    seen: dict[int, list] = {0: [], 1: []}
    got: dict[int, object] = {}

    def rank(r: int) -> None:
        def square(m, part):
            seen[r].append(list(part))
            return [x * x for x in part]

        try:
            got[r] = map_batches(model, items, 2, square, ctx=ThreadRank(rank=r, world=2, board=board, meet=meet))
        except BaseException as exc:  # surfaced below: a thread's exception would be lost
            got[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got[0] == got[1] == [x * x for x in items]  # every rank: all results, in row order
    assert seen == {0: [[0, 1], [2, 3]], 1: [[4, 5], [6]]}  # each rank mapped its contiguous shard only

    alone: list = []
    assert map_batches(model, items, 2, lambda m, part: alone.append(list(part)) or [x * x for x in part]) == \
        [x * x for x in items]  # no context: this process maps every row, in batches
    assert alone == [[0, 1], [2, 3], [4, 5], [6]]
    assert SINGLE.all_gather([1, 2]) == [[1, 2]]


def test_parallel_engine_auto_follows_accelerate_fsdp(monkeypatch):
    from atwu_fast.model.distributed import parallel_engine

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert parallel_engine("auto") == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert parallel_engine("auto") == "fsdp"
    assert parallel_engine("ddp") == "ddp"


@pytest.mark.parametrize("args, message", [
    (["--efficiency.lora_rank", "4"], "fsdp does not support LoRA"),
    (["--efficiency.optim", "adamw_8bit"], "needs --efficiency.optim adamw"),
])
def test_fsdp_rejects_what_it_cannot_shard(args, message, capsys):
    from atwu_fast.unlearn.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--efficiency.parallel", "fsdp", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_sampler_drops_epoch_tails_too_short_for_every_rank():
    from atwu_fast.train.sampling import EpochSampler

    batches = [next(s) for s in [EpochSampler(7, 3, 0, min_batch=2)] for _ in range(6)]
    assert [len(b) for b in batches] == [3, 3, 3, 3, 3, 3]  # the 1-row tail of each epoch is skipped
    single = EpochSampler(7, 3, 0)
    assert [len(next(single)) for _ in range(3)] == [3, 3, 1]  # one process keeps it
    with pytest.raises(ValueError, match="cannot give each of 4 ranks a row"):
        EpochSampler(7, 3, 0, min_batch=4)


def test_too_few_rows_per_global_batch_is_a_one_line_error(monkeypatch, capsys):
    from atwu_fast.unlearn.driver import resolve_engine

    with pytest.raises(SystemExit) as exc:
        resolve_engine(ExperimentConfig(train=TrainConfig(forget_batch_size=2)), world=4)
    assert exc.value.code == 2 and "4 ranks need train.forget_batch_size" in capsys.readouterr().err
