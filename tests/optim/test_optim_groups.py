"""frozen.optim.param_groups: groups over exactly the trainable set, with the usual conventions."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import two_layers
from torch import nn

import frozen


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(3))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).mean(1)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def frozen_embed() -> Net:
    net = Net()
    net.embed = frozen.Frozen(net.embed)
    return frozen.settle(net)


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_groups_cover_exactly_the_trainable_set_once():
    net = frozen_embed()
    groups = frozen.optim.param_groups(net, lr=0.1, weight_decay=0.01, no_decay_bias_and_norm=True)
    held = [p for g in groups for p in g["params"]]
    assert len(held) == len(ids(held))  # no parameter in two groups
    assert ids(held) == ids(frozen.trainable(net))
    assert [g["name"] for g in groups] == ["default", "default/no_decay"]
    assert groups[0]["frozen_params"] == ["embed.weight"]
    torch.optim.AdamW(groups).step()  # torch accepts them as they are


def test_no_decay_rule_is_one_dimensional_or_norm_layer():
    net = Net()
    groups = {
        g["name"]: g for g in frozen.optim.param_groups(net, lr=0.1, weight_decay=0.01, no_decay_bias_and_norm=True)
    }
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = sorted(names[id(p)] for p in groups["default"]["params"])
    assert decayed == ["embed.weight", "head.weight", "layers.0.0.weight", "layers.1.0.weight", "layers.2.0.weight"]
    assert groups["default/no_decay"]["weight_decay"] == 0.0
    assert groups["default"]["weight_decay"] == 0.01


def test_overrides_by_pattern_later_wins_and_override_beats_no_decay():
    net = Net()
    groups = frozen.optim.param_groups(
        net,
        lr=0.1,
        weight_decay=0.01,
        no_decay_bias_and_norm=True,
        overrides={"head": {"lr": 1e-3}, "**.bias": {"weight_decay": 0.5}, "layers.1-2": {"name": "upper"}},
    )
    by_name = {g["name"]: g for g in groups}
    assert by_name["default/head/**.bias/no_decay"]["weight_decay"] == 0.5
    assert by_name["default/head/**.bias/no_decay"]["lr"] == 1e-3
    assert by_name["default/head"]["params"] == [net.head.weight]
    assert {id(p) for g in groups if "upper" in g["name"] for p in g["params"]} == ids(
        list(net.layers[1].parameters()) + list(net.layers[2].parameters())
    )
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


@pytest.mark.parametrize(
    "lr, lr_decay, expected",
    [
        pytest.param(1.0, 1 / 2.6, [2.6**-4, 2.6**-3, 2.6**-2, 2.6**-1, 1.0], id="ulmfit-2.6"),
        pytest.param(1.0, 0.9, [0.9**4, 0.9**3, 0.9**2, 0.9, 1.0], id="bert-layer-decay"),
        pytest.param(slice(1e-4, 1e-0), None, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], id="fastai-slice-range"),
        pytest.param(slice(1.0), None, [0.1, 0.1, 0.1, 0.1, 1.0], id="fastai-slice-top"),
    ],
)
def test_discriminative_learning_rates_over_ordered_parts(lr, lr_decay, expected):
    net = Net()
    parts = ["embed", "layers.0", "layers.1", "layers.2"]  # the head is the unmatched "rest", on top
    groups = frozen.optim.param_groups(net, parts=parts, lr=lr, lr_decay=lr_decay)
    assert [g["name"] for g in groups] == parts + ["rest"]
    assert all(math.isclose(g["lr"], want) for g, want in zip(groups, expected))


def test_frozen_parts_keep_their_group_and_rate_for_later():
    net = Net()
    for p in net.layers[0].parameters():  # frozen before the optimizer exists
        p.requires_grad_(False)
    groups = frozen.optim.param_groups(net, parts=["embed", "layers.0", "layers.1-2"], lr=1.0, lr_decay=0.5)
    layer0 = next(g for g in groups if g["name"] == "layers.0")
    assert layer0["params"] == [] and layer0["frozen_params"] == [
        "layers.0.0.weight",
        "layers.0.0.bias",
        "layers.0.1.weight",
        "layers.0.1.bias",
    ]
    assert layer0["lr"] == 0.25
    torch.optim.SGD(groups, lr=1.0)  # an empty group is fine for torch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(
            dict(overrides={"haed": {"lr": 1.0}}), r"'haed' matches no module.*'head'", id="unknown-override-pattern"
        ),
        pytest.param(
            dict(parts=["embed", "layer.*"]), r"'layer\.\*' matches no module.*'layers", id="unknown-part-pattern"
        ),
        pytest.param(dict(lr=slice(1e-3)), r"need the ordered parts", id="slice-without-parts"),
        pytest.param(dict(lr_decay=0.5, parts=["embed"]), r"lr_decay=0.5, lr=None", id="decay-without-lr"),
    ],
)
def test_bad_input_raises_and_builds_nothing(kwargs, match):
    net = Net()
    flags = [p.requires_grad for p in net.parameters()]
    with pytest.raises(frozen.FrozenError, match=match):
        frozen.optim.param_groups(net, **kwargs)
    assert flags == [p.requires_grad for p in net.parameters()]


def test_wrong_types():
    with pytest.raises(TypeError, match="expected model to be a torch.nn.Module"):
        frozen.optim.param_groups([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="Leave out 'params'"):
        frozen.optim.param_groups(Net(), overrides={"head": {"params": []}})


def test_parts_not_a_list_raises_naming_parts():
    with pytest.raises((frozen.FrozenError, TypeError), match="parts"):
        frozen.optim.param_groups(two_layers(), parts=5, lr=0.1)


def test_overrides_not_a_mapping_raises_naming_overrides():
    with pytest.raises((frozen.FrozenError, TypeError), match="overrides"):
        frozen.optim.param_groups(two_layers(), overrides=["1"], lr=0.1)
