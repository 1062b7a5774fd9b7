"""torch.compile across freeze/thaw (S12): same results as eager, counted recompiles, no silent eager fall back.

Compiles count through a backend that records each graph it is given (then runs it as
is, like ``backend="eager"``): cheap on 2 cores, and exactly what dynamo compiles.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn

import frozen
from frozen._core.compiled import RecompileWarning, is_compiled, reserve_recompiles


class CountingBackend:
    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def make_model(blocks: int = 3) -> nn.Module:
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())  # buffers that must not move
    body = [nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(blocks)]
    return nn.Sequential(stem, *body, nn.Linear(8, 2))  # no Dropout: eager and compiled draw no RNG


def batch(step: int) -> torch.Tensor:
    return torch.randn(16, 4, generator=torch.Generator().manual_seed(step))


SEQUENCE = [("freeze", ("0", "1", "2", "3")), ("thaw", ("3",)), ("thaw", ("2",)), ("freeze", ("3",)), ("thaw", ("3",))]


def run_sequence(backend):
    """Train 2 steps after each freeze/thaw of SEQUENCE; return the states and graphs compiled per change."""
    torch._dynamo.reset()
    model = make_model()
    model.train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    runner = model if backend is None else torch.compile(model, backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    new_graphs, step, unchanged = [], 0, []
    for function, targets in SEQUENCE:
        getattr(frozen, function)(model, *targets)
        frozen.optim.sync(optimizer, model)
        frozen_now = {
            k: v.clone() for k, v in model.state_dict().items() if frozen.is_frozen(model, k.rpartition(".")[0])
        }
        before = getattr(backend, "graphs", 0)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            runner(batch(step)).square().mean().backward()
            optimizer.step()
            step += 1
        new_graphs.append(getattr(backend, "graphs", 0) - before)
        unchanged.append(all(torch.equal(v, model.state_dict()[k]) for k, v in frozen_now.items()))
    return {"start": start, "end": model.state_dict(), "new_graphs": new_graphs, "unchanged": unchanged}


@pytest.fixture(scope="module")
def runs():
    backend = CountingBackend()
    return {"eager": run_sequence(None), "compiled": run_sequence(backend), "aot": run_sequence("aot_eager")}


def test_compiled_and_eager_freeze_thaw_sequences_agree(runs):
    # The counting backend runs dynamo's graphs as they are: bit-identical. aot_eager also traces
    # the backward (AOTAutograd), which may sum in another order: 1e-6.
    eager = runs["eager"]["end"]
    assert all(torch.equal(v, runs["compiled"]["end"][k]) for k, v in eager.items())
    for key, value in eager.items():
        torch.testing.assert_close(runs["aot"]["end"][key], value, rtol=0, atol=1e-6, msg=key)


def test_frozen_tensors_and_buffers_stay_bit_identical_compiled_or_not(runs):
    for run in runs.values():
        assert all(run["unchanged"])  # whatever was frozen during each phase did not move
        for key in ("0.0.weight", "0.1.running_mean", "0.1.running_var", "0.1.num_batches_tracked"):
            assert torch.equal(run["start"][key], run["end"][key])  # "0" stayed frozen throughout
        assert not torch.equal(run["start"]["2.0.weight"], run["end"]["2.0.weight"])  # thawed, trained


def test_each_new_freeze_configuration_compiles_once_and_a_seen_one_not_again(runs):
    # freeze -> first graph; thaw "3" and thaw "2" -> new configurations; freeze "3" -> new;
    # thaw "3" -> back to the configuration after thaw "2": no compile.
    assert runs["compiled"]["new_graphs"] == [1, 1, 1, 1, 0]


def twelve_stage_plan(limit: int, reserve: bool):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps the frame counters
    model = frozen.freeze(make_model(blocks=12), *[str(i) for i in range(13)])
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend)
    with torch._dynamo.config.patch(recompile_limit=limit):
        if reserve:
            reserve_recompiles(compiled, changes=12)
        for stage in reversed(range(1, 13)):  # thaw one block per stage, last first
            compiled(batch(stage)).sum().backward()
            frozen.thaw(model, str(stage))
        compiled(batch(0)).sum().backward()
        frames = dict(torch._dynamo.utils.counters["frames"])
    return backend.graphs, frames


def test_a_twelve_stage_plan_stays_compiled_with_reserve_recompiles():
    graphs, frames = twelve_stage_plan(limit=8, reserve=True)
    assert graphs == 13 and frames["total"] == frames["ok"] == 13  # every configuration compiled, none skipped


def test_without_it_dynamo_falls_back_to_eager_after_the_limit():
    graphs, frames = twelve_stage_plan(limit=8, reserve=False)
    assert graphs == 8  # stages 9..12 ran in eager mode: the silent fall back reserve_recompiles prevents


def test_reserve_recompiles_warns_instead_when_asked_and_ignores_eager_models():
    model = make_model()
    with torch._dynamo.config.patch(recompile_limit=8):
        assert reserve_recompiles(model, 12) == 8  # not compiled: nothing to reserve
        with pytest.warns(RecompileWarning, match="recompile_limit is 8"):
            assert reserve_recompiles(torch.compile(model, backend="eager"), 12, raise_limit=False) == 8
        assert reserve_recompiles(torch.compile(model, backend="eager"), 7) == 8  # fits already
        assert torch._dynamo.config.recompile_limit == 8
    model.compile(backend="eager")  # in place
    assert is_compiled(model) and is_compiled(nn.Sequential(model))
    with pytest.raises(TypeError, match="non-negative int"):
        reserve_recompiles(model, -1)


def test_a_twelve_stage_gradual_unfreezing_plan_reserves_its_recompiles():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = frozen.freeze(make_model(blocks=12), *[str(i) for i in range(13)])
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, lr=0.1), lr=0.1)
    backend = CountingBackend()
    stages = [frozen.schedule.Stage(k, (str(13 - k),)) for k in range(1, 13)]
    with torch._dynamo.config.patch(recompile_limit=8):
        runner = torch.compile(model, backend=backend)
        plan = frozen.schedule.GradualUnfreezing(model, optimizer, stages, compiled=runner)
        assert torch._dynamo.config.recompile_limit == 13
        for epoch in range(13):
            runner(batch(epoch)).sum().backward()
            plan.step()
        frames = dict(torch._dynamo.utils.counters["frames"])
    assert backend.graphs == 13 and frames["total"] == frames["ok"] == 13  # every stage compiled, none eager


def test_a_model_compiled_in_place_is_found_by_the_schedule():
    model = frozen.freeze(make_model(blocks=12), *[str(i) for i in range(13)])
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, lr=0.1), lr=0.1)
    model.compile(backend="eager")
    stages = [frozen.schedule.Stage(k, (str(13 - k),)) for k in range(1, 13)]
    with torch._dynamo.config.patch(recompile_limit=8):
        frozen.schedule.GradualUnfreezing(model, optimizer, stages)
        assert torch._dynamo.config.recompile_limit == 13
