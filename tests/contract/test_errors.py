"""Bad input to Frozen: clear errors, nothing modified."""

import pytest
import torch
from torch import nn

import frozen


def test_wrapping_something_that_is_not_a_module():
    with pytest.raises(TypeError, match=r"Frozen\(module\): expected a torch.nn.Module, received torch.Tensor"):
        frozen.Frozen(torch.ones(2))
    with pytest.raises(TypeError, match="received builtins.function"):
        frozen.Frozen(lambda x: x)


def test_unknown_mode_names_the_argument_and_the_choices_and_changes_nothing():
    inner = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    state = {k: v.clone() for k, v in inner.state_dict().items()}
    with pytest.raises(frozen.InvalidModeError, match=r"mode='train'.*'eval', 'inherit'.*mode='eval'") as info:
        frozen.Frozen(inner, mode="train")
    assert isinstance(info.value, frozen.FrozenError) and isinstance(info.value, ValueError)
    assert inner.training and all(m.training for m in inner.modules())
    assert all(p.requires_grad for p in inner.parameters())
    assert all(torch.equal(v, inner.state_dict()[k]) for k, v in state.items())


def test_every_error_class_is_a_frozen_error():
    for name in frozen.__all__:
        obj = getattr(frozen, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, frozen.FrozenError)
