"""frozen.state / frozen.load_state: the freeze state as data, for exact resume."""

import json

import pytest
import torch
from snapshots import assert_same, snapshot
from tiny_models import two_layers
from torch import nn

import frozen


def build() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 3, bias=False), nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), nn.Linear(3, 3, bias=False)
    )
    net[2].weight = net[0].weight
    return net


def frozen_run() -> nn.Module:
    net = build()
    net[1][0].bias.requires_grad_(False)  # by hand
    with pytest.warns(frozen.TiedParameterWarning):
        frozen.freeze(net, "0")
    frozen.freeze(net, "1", exclude=nn.BatchNorm1d, mode="inherit")
    net.eval()
    return net


def flags(net: nn.Module) -> list:
    return [(n, p.requires_grad) for n, p in net.named_parameters(remove_duplicate=False)]


def test_state_is_json_and_load_state_reproduces_it():
    net = frozen_run()
    saved = frozen.state(net)
    assert json.loads(json.dumps(saved)) == saved
    assert saved["frozen_slots"] == ["2.weight"] and saved["user_frozen"] == ["1.0.bias"]
    assert [e["path"] for e in saved["frozen"]] == ["0", "1", "1.0"]
    fresh = frozen.load_state(build(), json.loads(json.dumps(saved)))
    assert frozen.state(fresh) == saved
    assert flags(fresh) == flags(net)
    assert [n for n, _ in frozen.named_trainable(fresh)] == [n for n, _ in frozen.named_trainable(net)]
    fresh.train()
    assert not fresh[0].training and fresh[1].training and fresh[1][1].training
    frozen.thaw(fresh)
    assert fresh[2].weight.requires_grad and not fresh[1][0].bias.requires_grad


def test_load_state_replaces_what_is_frozen_now():
    net = frozen.freeze(build(), "1")
    saved = frozen.state(frozen.freeze(build(), "1.1"))
    frozen.load_state(net, saved)
    assert frozen.state(net) == saved


@pytest.mark.parametrize(
    "edit, error, match",
    [
        (
            lambda s: s["frozen"].append({"path": "9", "mode": "eval", "tied": "freeze", "training": True}),
            frozen.UnknownPathError,
            r"module path '9'.*closest",
        ),
        (lambda s: s["frozen"].__setitem__(0, {**s["frozen"][0], "mode": "off"}), frozen.FrozenError, "mode='off'"),
        (lambda s: s.__setitem__("version", 99), frozen.FrozenError, "version 99"),
        (lambda s: s["user_frozen"].append("1.0.gamma"), frozen.UnknownPathError, "parameter path '1.0.gamma'"),
    ],
    ids=["path", "mode", "version", "parameter"],
)
def test_bad_state_raises_and_changes_nothing(edit, error, match):
    saved = frozen.state(frozen_run())
    edit(saved)
    net = frozen.freeze(build(), "1.1")
    before = (frozen.state(net), flags(net))
    with pytest.raises(error, match=match):
        frozen.load_state(net, saved)
    assert (frozen.state(net), flags(net)) == before
    with pytest.raises(TypeError, match="expected the dict frozen.state"):
        frozen.load_state(net, [])


# -- load_state validates before it changes anything ---------------------------------------------------------


@pytest.mark.parametrize("name", ["int64", "bool", "complex64", "float8_e4m3fn"])
def test_load_state_with_an_edited_dtype_raises_before_changing_anything(name):
    saved = frozen.state(frozen.freeze(two_layers(), "0", dtype=torch.bfloat16))
    saved["frozen"][0]["dtype"] = name
    model = frozen.freeze(two_layers(), "1")
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=name):
        frozen.load_state(model, saved)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(frozen=None),
        lambda s: s.update(switched_off=None),
        lambda s: s["frozen"][0].update(path=None),
        lambda s: s["frozen"][0].update(tied_slots=None),
    ],
    ids=["frozen=None", "switched_off=None", "path=None", "tied_slots=None"],
)
def test_load_state_with_a_none_field_raises_and_changes_nothing(edit):
    saved = frozen.state(frozen.freeze(two_layers(), "0"))
    edit(saved)
    model = two_layers()
    before = snapshot(model)
    with pytest.raises((frozen.FrozenError, TypeError), match="saved|state"):
        frozen.load_state(model, saved)
    assert_same(before, snapshot(model))
