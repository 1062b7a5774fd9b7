"""Flag ownership follows the parameter object, not its slot (S14): parametrizations and thaw."""

import torch
from tiny_models import two_layers
from torch import nn
from torch.nn.utils import parametrize

import frozen


class Skew(nn.Module):
    """A parametrization: the skew-symmetric part of a square matrix."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.triu(1)
        return a - a.T


def test_parametrization_registered_while_frozen_then_thaw_trains_again():
    p = two_layers()
    frozen.freeze(p, "0")
    parametrize.register_parametrization(p[0], "weight", Skew())
    frozen.thaw(p)
    original = p[0].parametrizations.weight.original
    assert original.requires_grad
    assert any(q is original for q in frozen.trainable(p))


def test_parametrization_registered_before_freeze_then_thaw_trains_again():
    p = two_layers()
    parametrize.register_parametrization(p[0], "weight", Skew())
    frozen.freeze(p, "0")
    assert not p[0].parametrizations.weight.original.requires_grad
    frozen.thaw(p)
    assert p[0].parametrizations.weight.original.requires_grad


def test_parametrization_removed_while_frozen_then_thaw_trains_again():
    p = two_layers()
    parametrize.register_parametrization(p[0], "weight", Skew())
    frozen.freeze(p, "0")
    parametrize.remove_parametrizations(p[0], "weight")  # the same Parameter object moves back to p[0]
    frozen.thaw(p)
    assert p[0].weight.requires_grad
    assert any(q is p[0].weight for q in frozen.trainable(p))
