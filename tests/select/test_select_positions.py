"""Positional selectors: negative indices, slices, inclusive ranges, on any numbered container."""

from collections import OrderedDict

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

import frozen


def bert12() -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=12,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def layers_of(paths: list[str], prefix: str = "bert.encoder.layer.") -> list[int]:
    """The layer numbers whose roots are in ``paths``."""
    return [int(p[len(prefix) :]) for p in paths if p.startswith(prefix) and p[len(prefix) :].isdigit()]


def test_last_two_layers_of_a_12_layer_bert():
    model = bert12()
    selected = frozen.select(model, "bert.encoder.layer.-2:")
    assert layers_of(selected) == [10, 11]
    below = [n for n, _ in model.named_modules() if n.startswith(("bert.encoder.layer.10", "bert.encoder.layer.11"))]
    assert selected == below  # exactly the two layers with their subtrees, in model order
    assert layers_of(frozen.select(model, "bert.encoder.layer.-1")) == [11]
    assert layers_of(frozen.select(model, "bert.encoder.layer.:-2")) == list(range(10))


@pytest.mark.parametrize(
    "segment, expected",
    [
        ("-1", [11]),
        ("-12", [0]),
        ("-2:", [10, 11]),
        (":3", [0, 1, 2]),
        ("2:4", [2, 3]),  # Python-style: end excluded
        ("2-4", [2, 3, 4]),  # inclusive range, as before
        ("9:", [9, 10, 11]),
        ("-3:-1", [9, 10]),
        ("1:-9", [1, 2]),
        ("-20:2", [0, 1]),  # clamped like a Python slice
        (":", list(range(12))),
    ],
)
def test_positions_follow_python_indexing(segment, expected):
    layers = nn.ModuleList(nn.Linear(1, 1) for _ in range(12))
    model = nn.Sequential(OrderedDict(layers=layers))
    roots = [p for p in frozen.select(model, f"layers.{segment}") if p.count(".") == 1]
    assert roots == [f"layers.{i}" for i in expected]
    if ":" in segment:  # a slice selects what Python's slice of the same list gives
        start, stop = (int(x) if x else None for x in segment.split(":"))
        assert expected == list(range(12))[start:stop]


def test_negative_positions_count_from_the_end_of_that_container():
    # Containers of different lengths: -1 is each one's own last child.
    model = nn.Sequential(
        nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1)), nn.Sequential(*(nn.Linear(1, 1) for _ in range(3)))
    )
    assert frozen.select(model, "*.-1") == ["0.1", "1.2"]
    assert frozen.select(model, "-1.-2:") == ["1.1", "1.2"]
    # "**.-1": the last child of every numbered container, at any depth (the root's last is "1").
    assert frozen.select(model, "**.-1") == ["0.1", "1", "1.0", "1.1", "1.2"]


def test_numbered_module_dict_and_parameter_list():
    model = nn.Module()
    model.blocks = nn.ModuleDict({"0": nn.Linear(1, 1), "1": nn.Linear(1, 1), "5": nn.Linear(1, 1)})
    model.tokens = nn.ParameterList([nn.Parameter(torch.zeros(2)) for _ in range(3)])
    # -1 is the largest number (the container's span is 6); no child is numbered 4.
    assert frozen.select(model, "blocks.-1") == ["blocks.5"]
    assert frozen.select(model, "blocks.-3:") == ["blocks.5"]
    with pytest.raises(frozen.SelectorError, match="'blocks.-2' matches no module or parameter path"):
        frozen.select(model, "blocks.-2")
    # ParameterList children are parameters: positions select them as parameters.
    assert frozen.select(model, "tokens.-2:") == ["tokens.1", "tokens.2"]


def test_positions_need_numbered_children():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1), relu=nn.ReLU()))
    with pytest.raises(frozen.SelectorError, match="closest existing paths: 'conv', 'relu'"):
        frozen.select(model, "-1")


@pytest.mark.parametrize(
    "pattern, match",
    [
        ("layers.-0", r"-0 is 0 in Python"),
        ("layers.-0:", r"-0 is 0 in Python"),
        ("layers.:-0", r"-0 is 0 in Python"),
        ("layers.4:2", r"slice '4:2' whose start is after its end.*'2:4'"),
        ("layers.1:2:3", r"not a slice.*no step"),
        ("layers.20:", r"'layers.20:' matches no module or parameter path"),
    ],
)
def test_malformed_positions_raise(pattern, match):
    model = nn.Sequential(OrderedDict(layers=nn.ModuleList(nn.Linear(1, 1) for _ in range(4))))
    with pytest.raises(frozen.SelectorError, match=match):
        frozen.select(model, pattern)


def test_freeze_all_but_the_last_two_layers_trains_exactly_them():
    """The fastai-style recipe of docs/selectors.md, with a real AdamW step."""
    model = bert12()
    frozen.freeze(model, "bert", exclude="bert.encoder.layer.-2:")
    named = dict(model.named_parameters())
    trainable = {name for name, _ in frozen.named_trainable(model)}
    assert trainable == {
        n for n in named if n.startswith(("bert.encoder.layer.10.", "bert.encoder.layer.11.", "classifier."))
    }
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(0, 50, (4, 8))
    model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()
    for name, param in named.items():
        if name in trainable:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]) and param.grad is None, name
    # Gradual unfreezing: thaw one more layer from the end.
    frozen.thaw(model, "bert.encoder.layer.-3")
    assert {n for n, _ in frozen.named_trainable(model)} == trainable | {
        n for n in named if n.startswith("bert.encoder.layer.9.")
    }
