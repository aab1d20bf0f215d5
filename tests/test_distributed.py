"""Two gloo ranks on CPU reproduce the single-process run at the same global batch."""

import datetime
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atwu_fast.config import ATWUParams, ExperimentConfig, ModelConfig, SyntheticConfig, TrainConfig
from atwu_fast.data import encode_qa, generate, tokenizer_corpus, train_tokenizer
from atwu_fast.distributed import SINGLE, DistContext, shutdown
from atwu_fast.methods import get_method
from atwu_fast.model import build_tiny_llama
from atwu_fast.trainer import Unlearner

MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
STEPS = 4


def build(method: str, ctx: DistContext) -> Unlearner:
    torch.set_num_threads(1)
    splits = generate(SyntheticConfig(n_forget_authors=3, n_retain_authors=4, n_holdout_authors=0, n_general=4))
    tok = train_tokenizer(tokenizer_corpus(splits), 400)
    enc = {k: [encode_qa(tok, r["question"], r["answer"], 64, r.get("spans")) for r in v] for k, v in splits.items()}
    model = build_tiny_llama(MODEL, tok, 80)
    reference = None
    if get_method(method).needs_reference:
        reference = build_tiny_llama(MODEL, tok, 80).requires_grad_(False)
    params = (ATWUParams(update_every=2) if method.startswith("atwu")
              else getattr(ExperimentConfig(), get_method(method).params_section))
    cfg = TrainConfig(steps=STEPS, forget_batch_size=4, retain_batch_size=6, lr=1e-3, grad_accum=2)
    return Unlearner(model, get_method(method), params, cfg, enc["forget"][:12], enc["retain"][:18], tok.pad_token_id,
                     reference=reference, dist=ctx)


def worker(rank: int, world: int, init_file: str, method: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))  # a stuck collective fails, never hangs
    try:
        unlearner = build(method, DistContext(rank, world))
        result = unlearner.run()
        if rank == 0:
            torch.save({"losses": [h["loss"] for h in result.history],
                        "weights": {k: v.detach().clone() for k, v in unlearner.model.state_dict().items()}}, out)
    finally:
        shutdown(DistContext(rank, world))


def run_two_ranks(method: str, tmp_path, out, deadline_s: float = 300.0) -> None:
    """Spawn 2 ranks and wait for them. A rank that has written its results but does not exit within
    the deadline is terminated with a warning instead of hanging the suite (gloo teardown can hang
    if a DDP reducer is the last owner of the group; Unlearner.release_distributed prevents that)."""
    context = mp.start_processes(worker, args=(2, str(tmp_path / "init"), method, str(out)), nprocs=2, join=False,
                                 start_method="spawn")
    start = time.time()
    while not context.join(timeout=5):
        if time.time() - start > deadline_s:
            if not out.exists():
                raise AssertionError("the ranks neither finished nor wrote results in time")
            warnings.warn("distributed workers did not exit after finishing; terminated", stacklevel=1)
            for process in context.processes:
                process.kill()
            return


@pytest.mark.parametrize("method", ["grad_diff", "npo", "simnpo", "wga", "atwu_frozen", "atwu", "atwu_nll", "atwu_logfit"])
def test_two_gloo_ranks_equal_one_process(tmp_path, method):
    single = build(method, SINGLE)
    losses = [h["loss"] for h in single.run().history]
    out = tmp_path / "rank0.pt"
    run_two_ranks(method, tmp_path, out)
    got = torch.load(out, weights_only=True)
    assert got["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    for key, value in single.model.state_dict().items():
        assert torch.allclose(got["weights"][key], value, rtol=1e-5, atol=1e-6), (key, (got["weights"][key] - value).abs().max())
    assert any(not torch.equal(v, build(method, SINGLE).model.state_dict()[k])
               for k, v in got["weights"].items())  # training moved the weights


def test_shards_cover_the_global_batch():
    batch = list(range(7))
    shards = [DistContext(r, 3).shard(batch) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert DistContext(0, 1).shard(batch) == batch
