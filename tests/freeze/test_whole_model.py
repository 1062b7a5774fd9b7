"""``freeze(model)`` with no targets freezes the whole model; ``thaw(model)`` thaws everything.

The convention of the libraries users come from, each translated into a behaviour check
with real forward/backward passes and optimizer steps: Lightning's
``BaseFinetuning.freeze(module)`` / ``make_trainable``, timm's ``freeze(model)`` /
``unfreeze(model)``, Keras' ``model.trainable = False`` / ``True``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from snapshots import assert_same, snapshot
from torch import nn

import frozen


class Net(nn.Module):
    """A small CNN: a backbone with BatchNorm and Dropout, then a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(64, 8)
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _step(model: nn.Module, params: list[nn.Parameter], optimizer_class: type = torch.optim.AdamW) -> None:
    optimizer = optimizer_class(params, lr=0.1)
    model.train()
    for seed in range(2):
        torch.manual_seed(seed)
        model(torch.randn(4, 3, 6, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def _trainable_names(model: nn.Module) -> set[str]:
    return {name for name, _ in frozen.named_trainable(model)}


def _flagged_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


# -- timm: freeze(model) / unfreeze(model) ------------------------------------------------


def test_timm_freeze_model_freezes_everything_and_a_real_step_changes_nothing():
    model = Net()
    before, start = _tensors(model), snapshot(model)
    assert frozen.freeze(model) is model
    assert frozen.trainable(model) == [] and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    model.train()
    model(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # a white box: the input still gets its gradient
    assert all(p.grad is None for p in model.parameters())
    assert not model.backbone[1].training and not model.backbone[3].training  # BatchNorm, Dropout: inference
    after = _tensors(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics included
    # timm's unfreeze(model): everything back, exactly, and it trains
    frozen.thaw(model)
    assert_same(snapshot(model), start)
    _step(model, list(model.parameters()), torch.optim.SGD)
    after = model.state_dict()
    # Every weight moved (a convolution's bias before a training BatchNorm gets no gradient from any loss).
    assert all(not torch.equal(before[name], after[name]) for name, _ in model.named_parameters() if "weight" in name)


def test_an_empty_list_unpacked_is_the_same_call_as_no_targets():
    targets: list[str] = []
    a, b = Net(), Net()
    frozen.freeze(a, *targets)
    frozen.freeze(b)
    assert frozen.state(a) == frozen.state(b) and frozen.trainable(a) == []
    assert frozen.select(a, *targets) == frozen.select(a) == frozen.select(a, "")


def test_exclude_without_targets_is_the_whole_model_except():
    model = Net()
    before = _tensors(model)
    frozen.freeze(model, exclude="head")
    assert _trainable_names(model) == {"head.weight", "head.bias"}
    _step(model, frozen.trainable(model))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(p.grad is None for p in model.backbone.parameters())


# -- Lightning: BaseFinetuning.freeze(module) / make_trainable(module) ----------------------


@pytest.mark.parametrize("train_bn", [False, True], ids=["train_bn=False", "train_bn=True"])
def test_lightning_base_finetuning_freeze_then_make_trainable(train_bn):
    from lightning.pytorch.callbacks import BaseFinetuning

    model, reference = Net(), Net()
    BaseFinetuning.freeze(reference.backbone, train_bn=train_bn)
    # Lightning's train_bn=True keeps BatchNorm trainable: the same as excluding it.
    frozen.freeze(model.backbone, exclude=nn.modules.batchnorm._BatchNorm if train_bn else ())
    assert _trainable_names(model) == _flagged_names(model) == _flagged_names(reference)
    before = _tensors(model)
    _step(model, frozen.trainable(model), torch.optim.SGD)
    after = model.state_dict()
    frozen_names = {"backbone.0.weight", "backbone.0.bias", "backbone.5.weight", "backbone.5.bias"}
    assert all(torch.equal(before[k], after[k]) for k in frozen_names)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    statistics_kept = torch.equal(before["backbone.1.running_mean"], after["backbone.1.running_mean"])
    assert statistics_kept == (not train_bn)  # a trained BatchNorm updates them, a frozen one keeps them
    # make_trainable(backbone) -> thaw(backbone): every parameter trains again
    BaseFinetuning.make_trainable(reference.backbone)
    frozen.thaw(model.backbone)
    assert _trainable_names(model) == _flagged_names(reference) == {n for n, _ in model.named_parameters()}
    before = _tensors(model)
    _step(model, frozen.trainable(model), torch.optim.SGD)
    assert not torch.equal(before["backbone.0.weight"], model.state_dict()["backbone.0.weight"])


# -- Keras: model.trainable = False / True ----------------------------------------------------


def test_keras_trainable_false_discriminator_while_the_generator_trains():
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6))
    discriminator = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.LeakyReLU(), nn.Linear(8, 1))
    gan = nn.Sequential(generator, discriminator)
    frozen.freeze(discriminator)  # discriminator.trainable = False
    d_before, g_before = _tensors(discriminator), _tensors(generator)
    optimizer = torch.optim.Adam(frozen.trainable(gan), lr=0.01)
    assert {id(p) for p in frozen.trainable(gan)} == {id(p) for p in generator.parameters()}
    gan.train()
    for _ in range(2):
        gan(torch.randn(8, 4)).mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
        assert all(p.grad is None for p in discriminator.parameters())
        optimizer.step()
        optimizer.zero_grad()
    d_after, g_after = discriminator.state_dict(), generator.state_dict()
    assert all(torch.equal(d_before[k], d_after[k]) for k in d_before)  # BatchNorm statistics too
    assert all(not torch.equal(g_before[k], g_after[k]) for k in g_before)
    frozen.thaw(discriminator)  # discriminator.trainable = True
    assert len(frozen.trainable(gan)) == len(list(gan.parameters()))
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=0.01)
    discriminator(torch.randn(8, 6)).mean().backward()
    optimizer.step()
    assert not torch.equal(d_before["0.weight"], discriminator.state_dict()["0.weight"])


def test_keras_trainable_false_on_a_copy_leaves_the_original_training():
    # A teacher copied from the student and frozen whole (distillation): the student trains on.
    student = Net()
    teacher = frozen.freeze(copy.deepcopy(student))
    assert frozen.trainable(teacher) == [] and len(frozen.trainable(student)) == len(list(student.parameters()))
    before = _tensors(teacher)
    optimizer = torch.optim.AdamW(frozen.trainable(student), lr=0.1)
    x = torch.randn(4, 3, 6, 6)
    student.train(), teacher.train()
    with torch.no_grad():
        target = teacher(x)
    (student(x) - target).square().mean().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(before["head.weight"], student.head.weight)
