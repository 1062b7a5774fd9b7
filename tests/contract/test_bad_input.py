"""Bad input raises a ``frozen.FrozenError`` naming the argument, what was expected, what was
received and the fix, and leaves the model as it was.

An argument of the wrong type is also a ``TypeError`` (``except TypeError`` keeps working).
"""

from __future__ import annotations

import pytest
import torch
from snapshots import assert_same, snapshot
from torch import nn

import frozen


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))


@pytest.mark.parametrize(
    "what, match",
    [
        (
            nn.Linear,
            r"params\(what=Linear\).*received the class torch.nn.Linear.*frozen.freeze\(model, torch.nn.Linear\)",
        ),
        (int, r"params\(what=int\).*received the class int.*frozen.params\('\*\*.weight'\)"),
    ],
    ids=["module-type", "builtin-class"],
)
def test_params_refuses_a_class_taken_for_a_predicate(what, match):
    model = _model()
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=match) as info:
        frozen.freeze(model, frozen.params(what))
    assert isinstance(info.value, TypeError)
    assert_same(snapshot(model), before)
    frozen.freeze(model, nn.Linear)  # the fix the message gives for a module type works
    assert {name for name, _ in frozen.named_trainable(model)} == {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_params_still_refuses_a_value_that_is_not_callable():
    with pytest.raises(frozen.FrozenError, match=r"frozen.params\(...\).*received int 3") as info:
        frozen.params(3)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    "paths, match",
    [
        ((1,), r"frozen.lean\(model, 1\): expected each path to be a module path \(str\).*received int 1"),
        ((["0"],), r"received list \['0'\].*unpack it: frozen.lean\(model, \*paths\)"),
        (("", 0), r"frozen.lean\(model, 0\).*received int 0"),
    ],
    ids=["int", "list", "int-after-a-good-path"],
)
def test_lean_refuses_a_path_that_is_not_a_string_and_changes_nothing(paths, match):
    model = frozen.freeze(_model())
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=match) as info:
        frozen.lean(model, *paths)
    assert isinstance(info.value, TypeError)
    assert_same(snapshot(model), before)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    expected = model(x)
    frozen.lean(model, "")  # the fix: a string path ('' is the whole model)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_unlean_refuses_a_path_that_is_not_a_string_and_changes_nothing():
    model = frozen.lean(frozen.freeze(_model()))
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=r"frozen.unlean\(model, 0\).*received int 0"):
        frozen.unlean(model, 0)
    assert_same(snapshot(model), before)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: frozen.freeze(m, 3), r"frozen.freeze: expected each target to be a path pattern.*received int 3"),
        (lambda m: frozen.freeze(m, "0", train_norms="yes"), r"train_norms='yes'.*expected True or False"),
        (lambda m: frozen.freeze(m, "0", dtype="bf16"), r"dtype='bf16'.*expected a floating torch.dtype"),
        (lambda m: frozen.optim.param_groups(m, parts="0"), r"param_groups\(parts=...\): expected a list of parts"),
    ],
    ids=["target", "train_norms", "dtype", "param_groups-parts"],
)
def test_wrong_argument_types_are_frozen_errors_too(call, match):
    model = _model()
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=match) as info:
        call(model)
    assert isinstance(info.value, TypeError)
    assert_same(snapshot(model), before)


def test_a_model_that_is_not_a_module():
    with pytest.raises(
        frozen.FrozenError, match=r"frozen.freeze\(model, ...\): expected model to be a torch.nn.Module"
    ):
        frozen.freeze(torch.zeros(2))
