"""``tied=`` in ``freeze`` and in ``Frozen``: the values they share mean the same.

``"train"`` keeps the shared parameter training at the other use, silently; ``"error"``
raises. The defaults differ on purpose: ``freeze``'s ``"freeze"`` freezes the parameter at
every use, ``Frozen``'s ``"warn"`` keeps it training at the plain use (a wrapper freezes
one use) and warns. Each refuses the other's default with a message pointing to the
right spelling, and changes nothing.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from snapshots import assert_same, snapshot
from torch import nn

import frozen


class Siamese(nn.Module):
    """Two branches sharing one weight: ``a`` and ``b``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a(x) * self.b(x)).sum()


def _wrapped(tied: str) -> Siamese:
    model = Siamese()
    model.a = frozen.Frozen(model.a, tied=tied)
    return model


def _frozen_in_place(tied: str) -> Siamese:
    return frozen.freeze(Siamese(), "a", tied=tied)


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(1)
    x = torch.randn(3, 4)
    return frozen.grad(model(x), model)


def _reference_grad() -> torch.Tensor:
    # The gradient through the plain use only: a's output is a constant.
    model = Siamese()
    torch.manual_seed(1)
    x = torch.randn(3, 4)
    with torch.no_grad():
        constant = model.a(x)
    (constant * model.b(x)).sum().backward()
    return model.b.weight.grad


@pytest.mark.parametrize("build", [_wrapped, _frozen_in_place], ids=["Frozen", "freeze"])
def test_train_keeps_the_shared_weight_training_at_the_other_use_silently(build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build("train")
        frozen.settle(model)
        grads = _grads(model)
    assert {n for n, _ in frozen.named_trainable(model)} == {"a.weight", "b.bias"}  # a.weight is b.weight
    assert grads["a.bias"] is None
    assert torch.allclose(grads["a.weight"], _reference_grad())  # the sum over the plain use only
    before = model.b.weight.detach().clone()
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)
    torch.manual_seed(1)
    model(torch.randn(3, 4)).backward()
    optimizer.step()
    assert not torch.equal(model.b.weight, before) and model.a.bias.grad is None


def test_error_raises_in_both_and_changes_nothing():
    with pytest.raises(frozen.TiedParameterError, match=r"still train through 'b.weight'"):
        frozen.settle(_wrapped("error"))
    model = Siamese()
    before = snapshot(model)
    with pytest.raises(frozen.TiedParameterError, match=r"'a.weight' and 'b.weight'"):
        frozen.freeze(model, "a", tied="error")
    assert_same(snapshot(model), before)


def test_the_defaults_differ_freeze_freezes_everywhere_frozen_keeps_the_plain_use_training():
    with pytest.warns(frozen.TiedParameterWarning, match="frozen at both"):
        in_place = frozen.freeze(Siamese(), "a")
    assert {n for n, _ in frozen.named_trainable(in_place)} == {"b.bias"}
    assert _grads(in_place)["a.weight"] is None  # b.weight is the same parameter: frozen there too
    wrapped = _wrapped("warn")
    with pytest.warns(frozen.TiedParameterWarning, match="still train through 'b.weight'"):
        frozen.settle(wrapped)
    assert {n for n, _ in frozen.named_trainable(wrapped)} == {"a.weight", "b.bias"}


def test_freeze_refuses_frozens_warn_and_points_to_train():
    model = Siamese()
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=r"tied='warn'.*expected one of.*'freeze'.*Frozen.*tied='train'"):
        frozen.freeze(model, "a", tied="warn")
    assert_same(snapshot(model), before)


def test_frozen_refuses_freezes_freeze_and_points_to_freezing_in_place():
    layer = nn.Linear(4, 4)
    before = snapshot(layer)
    with pytest.raises(
        frozen.FrozenError, match=r"tied='freeze'.*expected one of.*'warn'.*frozen.freeze\(model, path\)"
    ):
        frozen.Frozen(layer, tied="freeze")
    assert_same(snapshot(layer), before)
