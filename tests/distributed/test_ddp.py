"""S13 under DistributedDataParallel: freeze and thaw before or after wrapping, on 2 real ranks.

One spawn (2 processes, gloo, CPU, file-store rendezvous) runs every scenario in turn and
saves what each rank saw; the tests below check it. Each rank trains on its own data; a
single-process reference trained on both ranks' data (the same freeze/thaw sequence)
says what DDP should have computed. Tolerance against the reference: 1e-6 (the
all-reduce sums in another order); between ranks: bit-identical.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_ranks import run_scenarios
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import frozen
import frozen.distributed

WORLD = 2
STEPS = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU()),  # "0": frozen throughout
        nn.Sequential(nn.Linear(8, 8), nn.Tanh()),  # "1"
        nn.Sequential(nn.Linear(8, 8), nn.Tanh()),  # "2"
        nn.Linear(8, 2),  # "3"
    )


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1000 * step + rank))


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).square().mean()


class Run:
    """A training run: the DDP one (``ddp=True``) or the single-process reference on all ranks' data."""

    def __init__(self, rank: int, ddp: bool, freeze: tuple[str, ...] = ("0",), **ddp_kwargs):
        self.rank, self.step_index = rank, 0
        self.module = frozen.freeze(make_model(), *freeze) if freeze else make_model()
        self.module.train()
        self.model = frozen.distributed.wrap(self.module, **ddp_kwargs) if ddp else self.module
        self.optimizer = torch.optim.SGD(frozen.trainable(self.module), lr=0.1, momentum=0.9, weight_decay=0.01)

    def train(self, steps: int = STEPS) -> None:
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            if self.model is self.module:  # reference: the mean over both ranks' batches
                x = torch.cat([batch(self.step_index, r) for r in range(WORLD)])
            else:
                x = batch(self.step_index, self.rank)
            loss_of(self.model, x).backward()
            self.optimizer.step()
            self.step_index += 1

    def change(self, function, *targets: str) -> None:
        function(self.module, *targets)
        if self.model is not self.module:
            self.model = frozen.distributed.rewrap(self.model)
        frozen.optim.sync(self.optimizer, self.module)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}


def scenario_static(rank):
    run, ref = Run(rank, True), Run(rank, False)
    before = run.snapshot()
    run.train(), ref.train()
    return {
        "before": before,
        "after": run.snapshot(),
        "reference": ref.snapshot(),
        "find_unused": run.model.find_unused_parameters,
    }


def scenario_thaw(rank):
    run, ref = Run(rank, True, freeze=("0", "1", "2")), Run(rank, False, freeze=("0", "1", "2"))
    before, wrappers = run.snapshot(), [run.model]
    for part in ("", "2", "1"):  # train, thaw "2", train, thaw "1", train
        for r in (run, ref):
            if part:
                r.change(frozen.thaw, part)
            r.train()
        wrappers.append(run.model)
    same = frozen.distributed.rewrap(run.model)  # nothing changed: the same wrapper back
    return {
        "before": before,
        "after": run.snapshot(),
        "reference": ref.snapshot(),
        "new_wrappers": [a is not b for a, b in zip(wrappers[1:], wrappers[2:])],
        "same": same is run.model,
    }


def scenario_freeze_more(rank):
    run, ref = Run(rank, True, freeze=("0",)), Run(rank, False, freeze=("0",))
    for r in (run, ref):
        r.train()
    at_freeze = run.snapshot()
    for r in (run, ref):
        r.change(frozen.freeze, "1")
        r.train()
    return {"at_freeze": at_freeze, "after": run.snapshot(), "reference": ref.snapshot()}


def scenario_guard(rank):
    """Freeze/thaw after wrapping, then a forward without rewrap: FrozenError, not drift."""
    messages = {}
    for function, target, freeze in ((frozen.thaw, "2", ("0", "2")), (frozen.freeze, "2", ("0",))):
        run = Run(rank, True, freeze=freeze)
        run.train(1)
        function(run.module, target)
        try:
            run.model(batch(9, rank))
            messages[function.__name__] = ""
        except frozen.FrozenError as error:
            messages[function.__name__] = str(error)
    return messages


def scenario_unsupported(rank):
    """A DDP built directly, thaw + sync, no rewrap: the next forward raises instead of drifting."""
    module = frozen.freeze(make_model(), "0", "2")
    ddp = DistributedDataParallel(module)
    optimizer = torch.optim.SGD(frozen.trainable(module), lr=0.1)
    raised = ""
    for step in range(3):
        if step == 1:
            frozen.thaw(module, "2")
            frozen.optim.sync(optimizer, module)
        optimizer.zero_grad()
        try:
            loss_of(ddp, batch(step, rank)).backward()
        except frozen.FrozenError as error:
            raised = str(error)
            break
        optimizer.step()
    try:
        frozen.distributed.check_ddp_consistent(ddp)
        message = ""
    except frozen.FrozenError as error:
        message = str(error)
    weight = module[2][0].weight.detach().clone()
    ddp = frozen.distributed.rewrap(ddp)  # inferred arguments; rank 0's weights broadcast again
    return {"thawed": weight, "raised": raised, "message": message, "resynced": module[2][0].weight.detach().clone()}


def scenario_disagree(rank):
    run = Run(rank, True, freeze=("0", "1", "2"))
    frozen.thaw(run.module, "1" if rank == 0 else "2")  # same shapes: DDP's own shape check would pass
    try:
        frozen.distributed.rewrap(run.model)
        return ""
    except frozen.FrozenError as error:
        return str(error)


def scenario_arguments(rank):
    run = Run(rank, True, freeze=("0", "2"), gradient_as_bucket_view=True, bucket_cap_mb=1)
    run.train(1)
    run.change(frozen.thaw, "2")
    run.train(1)
    return {"view": run.model.gradient_as_bucket_view, "cap": run.model.bucket_bytes_cap, "after": run.snapshot()}


def scenario_resume(rank, out_dir):
    """Save mid-run after a thaw (rank 0 writes), resume in fresh objects, finish: bit-identical."""
    run = Run(rank, True, freeze=("0", "1", "2"))
    run.train(1)
    run.change(frozen.thaw, "2")
    run.train(1)
    path = os.path.join(out_dir, "checkpoint.pt")
    if rank == 0:
        saved = {
            "model": run.module.state_dict(),
            "freeze": frozen.state(run.module),
            "optimizer": frozen.optim.state_dict(run.optimizer, run.module),
            "step": run.step_index,
        }
        torch.save(saved, path)
    dist.barrier()
    run.train()
    again = Run(rank, True, freeze=("0", "1", "2"))  # built exactly as at the start
    saved = torch.load(path)
    frozen.load_state(again.module, saved["freeze"])
    again.module.load_state_dict(saved["model"])
    again.model = frozen.distributed.rewrap(again.model)
    frozen.optim.load_state_dict(again.optimizer, again.module, saved["optimizer"])
    again.step_index = saved["step"]
    again.train()
    return {"uninterrupted": run.snapshot(), "resumed": again.snapshot()}


def worker(rank: int, out_dir: str) -> None:
    run_scenarios(
        rank, WORLD, out_dir, {n: (lambda r, s=s: s(r, out_dir)) if n == "resume" else s for n, s in SCENARIOS.items()}
    )


SCENARIOS = {
    "static": scenario_static,
    "thaw": scenario_thaw,
    "freeze_more": scenario_freeze_more,
    "guard": scenario_guard,
    "unsupported": scenario_unsupported,
    "disagree": scenario_disagree,
    "arguments": scenario_arguments,
    "resume": scenario_resume,
}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(out_dir),), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def result(ranks, name):
    for r in ranks:
        assert not (isinstance(r[name], dict) and "error" in r[name]), r[name].get("error")
    return [r[name] for r in ranks]


def assert_same_on_every_rank(states):
    for key, value in states[0].items():
        assert all(torch.equal(value, s[key]) for s in states[1:]), key


def assert_close_to(state, reference, keys):
    for key in keys:
        torch.testing.assert_close(state[key], reference[key], rtol=0, atol=1e-6, msg=key)


def test_static_freeze_then_wrap_trains_in_sync_without_find_unused_parameters(ranks):
    rs = result(ranks, "static")
    assert not rs[0]["find_unused"]
    assert_same_on_every_rank([r["after"] for r in rs])
    frozen_keys = [k for k in rs[0]["before"] if k.startswith("0.") and "num_batches" not in k]
    assert all(torch.equal(rs[0]["before"][k], rs[0]["after"][k]) for k in frozen_keys)  # BatchNorm stats too
    assert not torch.equal(rs[0]["before"]["3.weight"], rs[0]["after"]["3.weight"])
    assert_close_to(rs[0]["after"], rs[0]["reference"], [k for k in rs[0]["after"] if not k.startswith("0.")])


def test_thaw_after_wrapping_with_rewrap_keeps_ranks_identical_and_matches_single_process(ranks):
    rs = result(ranks, "thaw")
    assert_same_on_every_rank([r["after"] for r in rs])
    assert rs[0]["new_wrappers"] == [True, True] and rs[0]["same"]
    for key in ("1.0.weight", "2.0.weight"):  # thawed mid-run, then trained
        assert not torch.equal(rs[0]["before"][key], rs[0]["after"][key])
    assert torch.equal(rs[0]["before"]["0.1.running_mean"], rs[0]["after"]["0.1.running_mean"])
    assert_close_to(rs[0]["after"], rs[0]["reference"], [k for k in rs[0]["after"] if not k.startswith("0.")])


def test_freeze_more_after_wrapping_with_rewrap_does_not_crash_and_keeps_the_part_constant(ranks):
    rs = result(ranks, "freeze_more")
    assert_same_on_every_rank([r["after"] for r in rs])
    assert torch.equal(rs[0]["at_freeze"]["1.0.weight"], rs[0]["after"]["1.0.weight"])
    assert not torch.equal(rs[0]["at_freeze"]["3.weight"], rs[0]["after"]["3.weight"])
    assert_close_to(rs[0]["after"], rs[0]["reference"], [k for k in rs[0]["after"] if not k.startswith("0.")])


def test_freeze_or_thaw_after_wrapping_without_rewrap_raises_at_the_next_forward(ranks):
    for messages in result(ranks, "guard"):
        assert "rewrap" in messages["thaw"] and "'2.0.weight'" in messages["thaw"]
        assert "rewrap" in messages["freeze"] and "frozen since" in messages["freeze"]


def test_a_wrapper_built_directly_refuses_the_step_after_a_thaw_and_check_ddp_consistent_catches_it(ranks):
    rs = result(ranks, "unsupported")
    # A DDP built directly, then thaw + sync: the next forward raises; no step trained the
    # thawed layer on local gradients, so the ranks did not drift apart.
    assert all("frozen.distributed.rewrap" in r["raised"] for r in rs)
    assert torch.equal(rs[0]["thawed"], rs[1]["thawed"])
    assert all("rewrap" in r["message"] for r in rs)  # check_ddp_consistent flags it (count/bytes fingerprint)
    assert torch.equal(rs[0]["resynced"], rs[1]["resynced"])  # rewrap of a plain DDP resyncs from rank 0


def test_rewrap_refuses_ranks_that_thawed_different_parts(ranks):
    for message in result(ranks, "disagree"):
        assert "ranks disagree" in message and "'1.0.weight'" in message and "'2.0.weight'" in message


def test_rewrap_keeps_the_constructor_arguments(ranks):
    rs = result(ranks, "arguments")
    assert all(r["view"] and r["cap"] == 1024 * 1024 for r in rs)
    assert_same_on_every_rank([r["after"] for r in rs])


def test_checkpoint_saved_after_a_thaw_resumes_bit_identically_under_ddp(ranks):
    for r in result(ranks, "resume"):
        assert_same_on_every_rank([r["uninterrupted"], r["resumed"]])
    assert_same_on_every_rank([r["resumed"] for r in result(ranks, "resume")])
