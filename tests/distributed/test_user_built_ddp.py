"""A ``DistributedDataParallel(model)`` built by hand — what most torchrun scripts do — on 2 real ranks.

Thaw or freeze more after wrapping, without ``frozen.distributed.wrap``: the model's next forward
inside the wrapper raises ``frozen.FrozenError`` naming ``frozen.distributed.rewrap`` (never the
silent drift of a thawed layer trained on local gradients, nor torch's "Expected to have finished
reduction" a step later); after ``rewrap`` the ranks train bit-identically. One spawn (gloo, CPU,
file-store rendezvous) runs every scenario; the tests read what each rank saw.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from gloo_ranks import run_scenarios
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import frozen
import frozen.distributed

WORLD = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 2))


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1000 * step + rank))


def step(model: nn.Module, optimizer: torch.optim.Optimizer, index: int, rank: int) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(batch(index, rank)).square().mean().backward()
    optimizer.step()


def forward_error(ddp: nn.Module, rank: int) -> str:
    """The message of the FrozenError the next forward raises ('' if it does not raise)."""
    try:
        ddp(batch(99, rank))
    except frozen.FrozenError as error:
        return str(error)
    return ""


def change_after_wrapping(rank: int, before: tuple[str, ...], change) -> dict:
    """Freeze ``before``, wrap by hand, train, apply ``change``, forward (refused), rewrap, train."""
    module = frozen.freeze(make_model(), *before) if before else make_model()
    ddp = DistributedDataParallel(module)
    optimizer = torch.optim.AdamW(frozen.trainable(module), lr=0.01)
    step(ddp, optimizer, 0, rank)
    change(module)
    frozen.optim.sync(optimizer, module)
    at_change = {k: v.detach().clone() for k, v in module.state_dict().items()}
    message = forward_error(ddp, rank)
    ddp = frozen.distributed.rewrap(ddp)
    for index in (1, 2):
        step(ddp, optimizer, index, rank)
    after = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return {"message": message, "at_change": at_change, "after": after, "again": forward_error(ddp, rank)}


def scenario_thaw(rank):
    return change_after_wrapping(rank, ("0", "2"), lambda m: frozen.thaw(m, "2"))


def scenario_freeze_more(rank):
    return change_after_wrapping(rank, ("0",), lambda m: frozen.freeze(m, "2"))


def scenario_freeze_a_plain_model(rank):
    """Nothing frozen when the wrapper was built: the first freeze comes after it."""
    return change_after_wrapping(rank, (), lambda m: frozen.freeze(m, "0"))


def scenario_same_size_swap(rank):
    """Thaw "2" and freeze "4" (same shapes) before the first forward: count and bytes are unchanged."""
    module = frozen.freeze(make_model(), "0", "2")
    ddp = DistributedDataParallel(module)
    frozen.thaw(module, "2")
    frozen.freeze(module, "4")
    return forward_error(ddp, rank)


def scenario_untouched(rank):
    """Freeze, wrap, train, no change: no error, the ranks agree (the check costs nothing visible)."""
    module = frozen.freeze(make_model(), "0")
    ddp = DistributedDataParallel(module)
    optimizer = torch.optim.AdamW(frozen.trainable(module), lr=0.01)
    for index in range(2):
        step(ddp, optimizer, index, rank)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


SCENARIOS = {
    "thaw": scenario_thaw,
    "freeze_more": scenario_freeze_more,
    "freeze_a_plain_model": scenario_freeze_a_plain_model,
    "same_size_swap": scenario_same_size_swap,
    "untouched": scenario_untouched,
}


def worker(rank: int, out_dir: str) -> None:
    run_scenarios(rank, WORLD, out_dir, SCENARIOS)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("user_ddp")
    mp.spawn(worker, args=(str(out_dir),), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def result(ranks, name):
    for r in ranks:
        assert not (isinstance(r[name], dict) and "error" in r[name]), r[name]["error"]
    return [r[name] for r in ranks]


def assert_same_on_every_rank(states):
    for key, value in states[0].items():
        assert all(torch.equal(value, s[key]) for s in states[1:]), key


def test_thaw_after_a_user_built_wrapper_raises_at_the_next_forward_then_rewrap_trains_in_sync(ranks):
    rs = result(ranks, "thaw")
    for r in rs:
        assert "frozen.distributed.rewrap" in r["message"] and "'2.weight'" in r["message"]
        assert r["again"] == ""  # the rebuilt wrapper holds the thawed layer
    assert_same_on_every_rank([r["after"] for r in rs])
    assert not torch.equal(rs[0]["at_change"]["2.weight"], rs[0]["after"]["2.weight"])  # it trains now
    assert torch.equal(rs[0]["at_change"]["0.weight"], rs[0]["after"]["0.weight"])


def test_freeze_more_after_a_user_built_wrapper_raises_a_frozen_error_not_torchs_reduction_error(ranks):
    rs = result(ranks, "freeze_more")
    for r in rs:
        assert "frozen.distributed.rewrap" in r["message"] and "frozen since: ['2.weight', '2.bias']" in r["message"]
        assert r["again"] == ""
    assert_same_on_every_rank([r["after"] for r in rs])
    for key in ("2.weight", "2.bias", "0.weight"):
        assert torch.equal(rs[0]["at_change"][key], rs[0]["after"][key]), key
    assert not torch.equal(rs[0]["at_change"]["5.weight"], rs[0]["after"]["5.weight"])


def test_the_first_freeze_of_a_model_wrapped_by_hand_is_caught_too(ranks):
    rs = result(ranks, "freeze_a_plain_model")
    assert all("frozen.distributed.rewrap" in r["message"] for r in rs)
    assert_same_on_every_rank([r["after"] for r in rs])
    assert torch.equal(rs[0]["at_change"]["0.weight"], rs[0]["after"]["0.weight"])


def test_a_thaw_and_a_freeze_of_the_same_size_are_told_apart(ranks):
    for message in result(ranks, "same_size_swap"):
        assert "Trainable since: ['2.weight', '2.bias']" in message and "'4.weight'" in message


def test_a_user_built_wrapper_without_changes_trains_in_sync(ranks):
    assert_same_on_every_rank(result(ranks, "untouched"))
