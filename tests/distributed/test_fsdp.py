"""S13 under FSDP2 (``fully_shard``): frozen parts on 2 real ranks (gloo, CPU, file-store rendezvous).

The model mixes a wholly frozen sub-module ("0"), a module with a trainable weight and a
frozen bias ("1": the bias frozen by hand, since selectors name modules), and a trainable
head ("2"). Every module is sharded, then the root. FSDP2 reads ``requires_grad`` at
every step, so freeze/thaw mid-run needs no rebuild: only ``frozen.optim.sync``. A
single-process reference trained on both ranks' data says what FSDP2 should compute
(tolerance 1e-6: the reduce-scatter sums in another order). One spawn runs it all.
"""

from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import frozen
import frozen.distributed

WORLD = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), nn.Linear(16, 16), nn.Linear(16, 2))
    frozen.freeze(model, "0")
    model[1].bias.requires_grad_(False)  # "1" mixes a trainable weight and a frozen bias
    return model


def shard(model: nn.Module) -> nn.Module:
    for child in model:
        fully_shard(child)
    return fully_shard(model)


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1000 * step + rank))


def train(model, optimizer, steps, rank, reference=False):
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        x = torch.cat([batch(step, r) for r in range(WORLD)]) if reference else batch(step, rank)
        model(x).square().mean().backward()
        optimizer.step()


def local(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.to_local() if isinstance(v, DTensor) else v).detach().clone() for k, v in model.state_dict().items()}


def full(model: nn.Module) -> dict[str, torch.Tensor]:
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    return {k: v.detach().clone() for k, v in get_model_state_dict(model, options=options).items()}


def run(rank: int, out_dir: str) -> dict:
    model, reference = shard(make_model()), make_model()
    optimizer = torch.optim.Adam(frozen.trainable(model), lr=0.01)
    ref_optimizer = torch.optim.Adam(frozen.trainable(reference), lr=0.01)
    out: dict = {"start": local(model)}
    train(model, optimizer, range(3), rank)
    train(reference, ref_optimizer, range(3), rank, reference=True)
    out["static"], out["static_full"], out["static_ref"] = local(model), full(model), local(reference)
    out["state_keys"] = sorted(name for name, _ in frozen.named_trainable(model))
    out["held"] = sorted(name for name, p in model.named_parameters() if p in optimizer.state)
    out["state_local"] = sum(frozen.distributed.local_nbytes(t) for s in optimizer.state.values() for t in s.values())
    out["state_global"] = sum(t.nbytes for s in optimizer.state.values() for t in s.values())
    out["trainable_local"] = sum(frozen.distributed.local_nbytes(p) for p in frozen.trainable(model))

    # Mid-run: thaw the frozen sub-module, then freeze the head; sync only, no rebuild.
    for change, target, steps in ((frozen.thaw, "0", range(3, 5)), (frozen.freeze, "2", range(5, 7))):
        for m, opt in ((model, optimizer), (reference, ref_optimizer)):
            change(m, target)
            frozen.optim.sync(opt, m)
        out[f"before_{change.__name__}"] = local(model)
        train(model, optimizer, steps, rank)
        train(reference, ref_optimizer, steps, rank, reference=True)
        out[change.__name__], out[f"{change.__name__}_full"] = local(model), full(model)
        out[f"{change.__name__}_ref"] = local(reference)

    # Round trips into a fresh sharded model: the full state dict, and a sharded DCP checkpoint.
    saved_full = full(model)
    fresh = shard(make_model())
    set_model_state_dict(fresh, saved_full, options=StateDictOptions(full_state_dict=True))
    out["full_round_trip"] = local(fresh)
    dcp.save(model.state_dict(), checkpoint_id=os.path.join(out_dir, "dcp"))
    fresh = shard(make_model())
    sharded = fresh.state_dict()
    dcp.load(sharded, checkpoint_id=os.path.join(out_dir, "dcp"))
    fresh.load_state_dict(sharded)
    out["sharded_round_trip"], out["final"] = local(fresh), local(model)
    return out


def worker(rank: int, out_dir: str) -> None:
    store = os.path.join(out_dir, "store")
    timeout = datetime.timedelta(seconds=40)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD, timeout=timeout)
    torch.set_num_threads(1)
    try:
        try:
            out = run(rank, out_dir)
        except Exception:
            out = {"error": traceback.format_exc()}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down (else the peer may abort)
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: a gloo thread still alive at exit makes C++ call
    # std::terminate now and then (SIGABRT after the results were written). Errors still propagate.
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp")
    mp.spawn(worker, args=(str(out_dir),), nprocs=WORLD, join=True)
    results = [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]
    for r in results:
        assert "error" not in r, r["error"]
    return results


FROZEN_AT_START = ["0.0.weight", "0.0.bias", "1.bias"]


def assert_close(state, reference, keys):
    for key in keys:
        torch.testing.assert_close(state[key], reference[key], rtol=0, atol=1e-6, msg=key)


def test_frozen_shards_stay_bit_identical_on_every_rank_and_trainable_ones_train(ranks):
    for r in ranks:
        assert all(torch.equal(r["start"][k], r["static"][k]) for k in FROZEN_AT_START)
        assert not torch.equal(r["start"]["1.weight"], r["static"]["1.weight"])
        assert not torch.equal(r["start"]["2.weight"], r["static"]["2.weight"])
    # Each rank holds its own shard; the gathered full model is the same everywhere ...
    assert all(torch.equal(v, ranks[1]["static_full"][k]) for k, v in ranks[0]["static_full"].items())
    # ... and is what one process would have computed on both ranks' data.
    assert_close(ranks[0]["static_full"], ranks[0]["static_ref"], ranks[0]["static_ref"])


def test_optimizer_state_exists_only_for_trainable_shards(ranks):
    for r in ranks:
        assert r["held"] == r["state_keys"] == ["1.weight", "2.bias", "2.weight"]
        # Adam: two moments per local shard, plus one 4-byte step per parameter.
        assert r["state_local"] == 2 * r["trainable_local"] + 4 * 3
        assert r["state_global"] > r["state_local"]  # DTensor.nbytes is the global size


def test_thaw_and_freeze_mid_run_need_only_sync(ranks):
    for r in ranks:
        assert not torch.equal(r["before_thaw"]["0.0.weight"], r["thaw"]["0.0.weight"])  # thawed part trains
        assert torch.equal(r["before_freeze"]["2.weight"], r["freeze"]["2.weight"])  # frozen head is constant
        assert torch.equal(r["start"]["1.bias"], r["freeze"]["1.bias"])  # the hand-frozen bias too
    for name in ("thaw", "freeze"):
        full_states = [r[f"{name}_full"] for r in ranks]
        assert all(torch.equal(v, full_states[1][k]) for k, v in full_states[0].items())
        assert_close(full_states[0], ranks[0][f"{name}_ref"], full_states[0])


def test_state_dict_round_trips_full_and_sharded(ranks):
    for r in ranks:
        for trip in ("full_round_trip", "sharded_round_trip"):
            assert all(torch.equal(v, r[trip][k]) for k, v in r["final"].items()), trip
