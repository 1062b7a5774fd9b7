"""frozen.optim.sync: an existing optimizer follows freeze / thaw mid-training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import frozen


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 2) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        optimizer.step()


def freeze_at(model: nn.Sequential, index: int) -> None:
    model[index] = frozen.Frozen(model[index])
    frozen.settle(model)


def thaw_at(model: nn.Sequential, index: int) -> None:
    model[index] = model[index].module  # the same parameter objects, used plainly again
    frozen.settle(model)


def layout(optimizer: torch.optim.Optimizer) -> list:
    """Everything sync may change, to check that a failing call changed nothing."""
    return [
        ({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]]) for g in optimizer.param_groups
    ] + [sorted(id(p) for p in optimizer.state)]


def test_freeze_drops_params_state_and_stale_grads_thaw_returns_them_fresh():
    model = make_model()
    optimizer = torch.optim.Adam(frozen.optim.param_groups(model, lr=0.01))
    train(model, optimizer)
    full = frozen.optim.state_nbytes(optimizer)
    freeze_at(model, 2)
    frozen.optim.sync(optimizer, model)
    group = optimizer.param_groups[0]
    assert group["frozen_params"] == ["2.weight", "2.bias"]
    assert all(p not in optimizer.state and p.grad is None for p in model[2].parameters())
    assert frozen.optim.state_nbytes(optimizer) < full  # the memory came back
    train(model, optimizer)
    group["lr"] = 0.005  # e.g. a scheduler moved it meanwhile
    thaw_at(model, 2)
    frozen.optim.sync(optimizer, model)
    assert len(optimizer.param_groups) == 1 and group["frozen_params"] == []
    assert [id(p) for p in group["params"][-2:]] == [id(p) for p in model[2].parameters()]
    before = model[2].weight.detach().clone()
    train(model, optimizer, steps=1)
    assert int(optimizer.state[model[2].weight]["step"]) == 1  # fresh state
    # Adam's first step moves each element by about lr: the group's current rate.
    assert torch.allclose((before - model[2].weight).abs().max(), torch.tensor(0.005), rtol=1e-3)


def test_parts_frozen_before_the_optimizer_return_to_their_own_group():
    model = make_model()
    freeze_at(model, 0)
    groups = frozen.optim.param_groups(model, parts=["0", "2"], lr=1.0, lr_decay=0.1)
    optimizer = torch.optim.SGD(groups, lr=1.0)
    assert [(g["name"], len(g["params"])) for g in optimizer.param_groups] == [("0", 0), ("2", 2), ("rest", 2)]
    thaw_at(model, 0)
    frozen.optim.sync(optimizer, model)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2, 2]
    assert optimizer.param_groups[0]["params"][0] is model[0].weight
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_params_never_held_go_to_a_thawed_group_with_the_optimizer_defaults():
    model = make_model()
    freeze_at(model, 0)
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.3, momentum=0.9)  # a plain list
    thaw_at(model, 0)
    frozen.optim.sync(optimizer, model)
    new = optimizer.param_groups[-1]
    assert new["name"] == "thawed" and new["lr"] == 0.3 and new["momentum"] == 0.9
    assert [id(p) for p in new["params"]] == [id(p) for p in model[0].parameters()]


def test_new_group_with_its_own_rate_like_lightning():
    model = make_model()
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=1e-3))
    freeze_at(model, 0)
    frozen.optim.sync(optimizer, model)  # parks layer 0 in "default"
    thaw_at(model, 0)
    frozen.optim.sync(optimizer, model, new_group={"name": "backbone", "lr": 1e-4})
    assert [g["name"] for g in optimizer.param_groups] == ["default", "backbone"]
    assert optimizer.param_groups[1]["lr"] == 1e-4 and optimizer.param_groups[1]["weight_decay"] == 0.01
    assert optimizer.param_groups[0]["frozen_params"] == []  # no parameter recorded twice
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())


def test_sync_is_idempotent_and_keeps_torch_named_groups_aligned():
    model = make_model()
    optimizer = torch.optim.SGD(model.named_parameters(), lr=0.1)
    freeze_at(model, 4)
    frozen.optim.sync(optimizer, model)
    once = layout(optimizer)
    frozen.optim.sync(optimizer, model)
    assert layout(optimizer) == once
    assert optimizer.param_groups[0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    thaw_at(model, 4)
    frozen.optim.sync(optimizer, model)
    assert optimizer.param_groups[0]["param_names"][-2:] == ["4.weight", "4.bias"]
    train(model, optimizer, steps=1)


def test_groups_built_up_front_compose_with_an_lr_scheduler():
    model = make_model()
    freeze_at(model, 0)
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, parts=["0"], lr=1.0, lr_decay=0.5), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    for epoch in range(3):
        train(model, optimizer, steps=1)
        scheduler.step()
        if epoch == 0:
            thaw_at(model, 0)
            frozen.optim.sync(optimizer, model)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5 * 0.9**3, 0.9**3])


def test_optimizer_holding_a_parameter_not_in_the_model_raises_and_changes_nothing():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    train(model, optimizer)
    model[2] = nn.Linear(4, 4)  # the model changed since the optimizer was built
    model[0].requires_grad_(False)  # frozen by hand: its stale gradient is for sync to clear
    before = layout(optimizer)
    with pytest.raises(frozen.FrozenError, match=r"param_groups\[0\].*params\[2\], shape \(4, 4\).*not in the model"):
        frozen.optim.sync(optimizer, model)
    assert layout(optimizer) == before
    assert all(p.grad is not None for p in model[0].parameters())  # stale grads untouched too


def test_recorded_frozen_path_missing_from_the_model_raises_and_changes_nothing():
    model = make_model()
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, lr=0.1))
    optimizer.param_groups[0]["frozen_params"].append("9.weight")
    other = copy.deepcopy(layout(optimizer))
    with pytest.raises(frozen.FrozenError, match=r"'9.weight' in 'frozen_params'.*changed since"):
        frozen.optim.sync(optimizer, model)
    assert layout(optimizer) == other


def test_wrong_types():
    model = make_model()
    with pytest.raises(TypeError, match="expected optimizer to be a torch.optim.Optimizer"):
        frozen.optim.sync([p for p in model.parameters()], model)
    with pytest.raises(TypeError, match="expected a dict of group options"):
        frozen.optim.sync(torch.optim.SGD(model.parameters(), lr=0.1), model, new_group=0.1)


def test_lbfgs_follows_freeze_and_thaw_through_sync():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)

    def closure():
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    frozen.freeze(model, "0")
    frozen.optim.sync(optimizer, model)
    before = model[0].weight.detach().clone()
    head = model[2].weight.detach().clone()
    optimizer.step(closure)
    assert torch.equal(model[0].weight, before) and not torch.equal(model[2].weight, head)
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in frozen.trainable(model)}
    frozen.thaw(model)
    frozen.optim.sync(optimizer, model)
    optimizer.step(closure)
    assert not torch.equal(model[0].weight, before)
