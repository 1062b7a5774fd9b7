"""Gradual unfreezing under DistributedDataParallel on 2 real ranks (gloo, CPU, file-store rendezvous).

* ``GradualUnfreezing`` given the DDP wrapper rebuilds it after each thaw (``frozen.distributed.rewrap``):
  the thawed layer trains and the replicas stay bit-identical.
* The Hugging Face callback cannot swap the Trainer's wrapper; it averages the gradients of
  parameters thawed after wrapping before each optimizer step. Driven here by hand around a plain
  ``DistributedDataParallel`` built as the Trainer builds it.
"""

from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import frozen
import frozen.distributed
from frozen.schedule import GradualUnfreezing, Stage

WORLD = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def step(model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, index: int, before_step=None) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(100 * index + rank))  # each rank its own data
    optimizer.zero_grad()
    model(x).square().mean().backward()
    if before_step is not None:
        before_step()
    optimizer.step()


def scenario_schedule(rank: int) -> dict[str, torch.Tensor]:
    module = frozen.freeze(make_model(), "0", "2")
    optimizer = torch.optim.SGD(frozen.optim.param_groups(module, lr=0.1), lr=0.1, momentum=0.9)
    plan = GradualUnfreezing(frozen.distributed.wrap(module), optimizer, [Stage(1, "2")])
    for index in range(4):  # two "epochs" of two steps; layer 2 thaws after the first
        if index == 2:
            plan.step()
        step(plan.wrapper, optimizer, rank, index)
    assert plan.wrapper is not None and not frozen.distributed.needs_rewrap(plan.wrapper)
    return {k: v.clone() for k, v in module.state_dict().items()}


def scenario_hf_late_thaw(rank: int) -> dict[str, torch.Tensor]:
    from frozen.integrations.hf import FreezeCallback

    module = frozen.freeze(make_model(), "2")
    callback = FreezeCallback()
    callback._model, callback._reduced = module, frozen._core.trainable_ids(module)  # as on_train_begin
    frozen.distributed.averaged_elsewhere(module)  # as on_train_begin: no rewrap, the callback averages
    ddp = DistributedDataParallel(module)  # the Trainer's wrapper: built once, never rebuilt
    optimizer = torch.optim.SGD(frozen.trainable(module), lr=0.1)
    step(ddp, optimizer, rank, 0)
    frozen.optim.sync(optimizer, frozen.thaw(module, "2"))  # layer 2 is not in DDP's reducer
    for index in (1, 2):
        step(ddp, optimizer, rank, index, lambda: callback.on_pre_optimizer_step(None, None, None))
    return {k: v.clone() for k, v in module.state_dict().items()}


def worker(rank: int, out_dir: str) -> None:
    store = os.path.join(out_dir, "store")
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD, timeout=timeout)
    try:
        results = {name: scenario(rank) for name, scenario in SCENARIOS.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down (else the peer may abort)
    except Exception:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: a gloo thread still alive at exit makes C++ call
    # std::terminate now and then (SIGABRT after the results were written). Errors still propagate.
    os._exit(0)


SCENARIOS = {"schedule": scenario_schedule, "hf": scenario_hf_late_thaw}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp-schedule")
    mp.spawn(worker, args=(str(out_dir),), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_layer_thawed_under_ddp_trains_and_replicas_stay_identical(ranks, name):
    first, second = (r[name] for r in ranks)
    assert all(torch.equal(first[k], second[k]) for k in first), name  # no silent divergence
    start = make_model().state_dict()
    assert not torch.equal(first["2.weight"], start["2.weight"])  # the thawed layer trained
    if name == "schedule":
        assert torch.equal(first["0.weight"], start["0.weight"])  # still frozen
