"""The S10 guarantee: a frozen parameter is bit-identical after any number of optimizer steps."""

from __future__ import annotations

import pytest
import torch
from optimizer_cases import CASES, Adam
from torch import nn

import frozen


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, *, set_to_none: bool = False) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=set_to_none)
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def assert_state_only_for(optimizer: torch.optim.Optimizer, kwargs: dict, params, record_property) -> None:
    assert {id(p) for p in optimizer.state} == {id(p) for p in params}
    # The bytes an optimizer of the same kind keeps for the trainable parameters alone.
    alone = [nn.Parameter(p.detach().clone()) for p in params]
    reference = type(optimizer)(alone, **kwargs)
    for p in alone:
        p.grad = torch.ones_like(p)
    reference.step()
    got, expected = frozen.optim.state_nbytes(optimizer), frozen.optim.state_nbytes(reference)
    record_property("optimizer_state_bytes", got)
    record_property("optimizer_state_bytes_trainable_alone", expected)
    assert got == expected


@pytest.mark.parametrize("cls, kwargs", CASES)
def test_frozen_from_the_start_never_moves_even_with_zero_grads(cls, kwargs, record_property):
    model = make_model()
    model[0] = frozen.Frozen(model[0])
    frozen.settle(model)
    optimizer = cls(frozen.optim.param_groups(model), **kwargs)
    before = snapshot(model[0].parameters())
    trained_before = snapshot(model[3].parameters())
    for p in model[0].parameters():
        p.grad = torch.zeros_like(p)  # what zero_grad(set_to_none=False) leaves behind elsewhere
    train(model, optimizer, steps=6, set_to_none=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model[0].parameters()))
    assert not any(torch.equal(a, p) for a, p in zip(trained_before, model[3].parameters()))
    assert_state_only_for(optimizer, kwargs, frozen.trainable(model), record_property)


def freeze_first_layer(model: nn.Sequential, how: str) -> None:
    if how == "freeze":
        frozen.freeze(model, "0")
    else:
        model[0] = frozen.Frozen(model[0])
        frozen.settle(model)


@pytest.mark.parametrize("how", ["freeze", "wrapper"])
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_frozen_mid_training_never_moves_after_sync(cls, kwargs, how, record_property):
    model = make_model()
    optimizer = cls(model.parameters(), **kwargs)  # holds everything, builds momentum for everything
    train(model, optimizer, steps=3)
    # Freeze the first layer mid-training; the freeze drops its last (stale) gradient.
    assert all(p.grad is not None for p in model[0].parameters())
    freeze_first_layer(model, how)
    assert all(p.grad is None for p in model[0].parameters())
    frozen.optim.sync(optimizer, model)
    before = snapshot(model[0].parameters())
    trained_before = snapshot(model[3].parameters())
    train(model, optimizer, steps=6, set_to_none=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model[0].parameters()))
    assert all(p.grad is None for p in model[0].parameters())
    assert not any(torch.equal(a, p) for a, p in zip(trained_before, model[3].parameters()))
    assert_state_only_for(optimizer, kwargs, frozen.trainable(model), record_property)


@pytest.mark.parametrize("how", ["freeze", "wrapper"])
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_frozen_between_backward_and_step_never_moves_even_without_sync(cls, kwargs, how):
    # The optimizer still holds the frozen layer (no sync) and has momentum / moments for it;
    # the freeze comes after backward, before step, and later steps zero gradients in place.
    model = make_model()
    optimizer = cls(model.parameters(), **kwargs)
    train(model, optimizer, steps=3)
    optimizer.zero_grad(set_to_none=False)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    freeze_first_layer(model, how)
    before = snapshot(model[0].parameters())
    trained_before = snapshot(model[3].parameters())
    optimizer.step()
    train(model, optimizer, steps=3, set_to_none=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model[0].parameters()))
    assert all(p.grad is None for p in model[0].parameters())
    assert not any(torch.equal(a, p) for a, p in zip(trained_before, model[3].parameters()))


@pytest.mark.parametrize("cls, kwargs", [c for c in CASES if "adamw" in c.id or "sgd-momentum" in c.id])
def test_by_hand_a_stale_gradient_moves_frozen_weights_until_sync(cls, kwargs):
    # The failure the library's freeze avoids: requires_grad_(False) by hand keeps the stale
    # (here zero) gradient, so weight decay and momentum keep moving the layer; sync clears it.
    model = make_model()
    optimizer = cls(model.parameters(), **kwargs)
    train(model, optimizer, steps=2)
    model[0].requires_grad_(False)
    before = snapshot(model[0].parameters())
    train(model, optimizer, steps=2, set_to_none=False)
    assert not torch.equal(before[0], model[0].weight)
    frozen.optim.sync(optimizer, model)
    assert all(p.grad is None for p in model[0].parameters())
    after_sync = snapshot(model[0].parameters())
    train(model, optimizer, steps=2, set_to_none=False)
    assert all(torch.equal(a, p) for a, p in zip(after_sync, model[0].parameters()))


def test_thawed_parameters_train_again_from_fresh_state():
    model = make_model()
    optimizer = Adam(model.parameters(), lr=0.01)
    train(model, optimizer, steps=3)
    model[0] = frozen.Frozen(model[0])
    frozen.settle(model)
    frozen.optim.sync(optimizer, model)
    train(model, optimizer, steps=2)
    model[0] = model[0].module  # thaw: the same parameter objects, used plainly again
    frozen.settle(model)
    frozen.optim.sync(optimizer, model)
    assert all(p not in optimizer.state for p in model[0].parameters())
    before = snapshot(model[0].parameters())
    train(model, optimizer, steps=1)
    assert int(optimizer.state[model[0].weight]["step"]) == 1  # fresh Adam state
    assert not torch.equal(before[0], model[0].weight)
