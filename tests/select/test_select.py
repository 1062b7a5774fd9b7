"""Selectors (S11): patterns, types, objects, predicates, exclude=, and their errors."""

import pytest
import torch
from snapshots import assert_same, snapshot
from tiny_models import two_layers
from torch import nn

import frozen


def make_model() -> nn.Module:
    encoder = nn.Module()
    encoder.embed = nn.Embedding(10, 4)
    encoder.layer = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(12))
    model = nn.Module()
    model.encoder = encoder
    model.head = nn.Linear(4, 2)
    return model


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("head", ["head"]),
        ("", None),  # the model itself, so every path
        ("encoder.layer.1", ["encoder.layer.1", "encoder.layer.1.0", "encoder.layer.1.1"]),
        ("encoder.layer.*.1", [f"encoder.layer.{i}.1" for i in range(12)]),
        ("encoder.layer.10-11.0", ["encoder.layer.10.0", "encoder.layer.11.0"]),
        (
            "**.1",
            ["encoder.layer.1"]
            + [p for i in range(12) for p in [f"encoder.layer.{i}.1"]]
            + ["encoder.layer.1.0", "encoder.layer.1.1"],
        ),
        ("enc*.emb?d", ["encoder.embed"]),
    ],
    ids=["exact", "root", "subtree", "one-segment", "range", "any-depth", "glob"],
)
def test_patterns(pattern, expected):
    model = make_model()
    result = frozen.select(model, pattern)
    all_paths = [name for name, _ in model.named_modules()]
    assert result == [p for p in all_paths if p in set(expected if expected is not None else all_paths)]


def test_range_is_inclusive_and_only_numbers():
    model = make_model()
    roots = [p for p in frozen.select(model, "encoder.layer.0-5") if p.count(".") == 2]
    assert roots == [f"encoder.layer.{i}" for i in range(6)]


def test_double_star_matches_zero_segments():
    model = make_model()
    assert frozen.select(model, "encoder.**") == [n for n, _ in model.named_modules() if n.startswith("encoder")]
    assert frozen.select(model, "**") == [n for n, _ in model.named_modules()]


def test_types_objects_predicates_and_no_target():
    model = make_model()
    assert frozen.select(model, nn.Embedding) == ["encoder.embed"]
    assert frozen.select(model, model.head) == ["head"]
    assert frozen.select(model, lambda path, module: path.endswith("layer.3")) == [
        "encoder.layer.3",
        "encoder.layer.3.0",
        "encoder.layer.3.1",
    ]
    # The whole model is "", and no targets at all (an empty list unpacked too) is the whole model.
    assert frozen.select(model, "") == [n for n, _ in model.named_modules()]
    assert frozen.select(model, *[]) == frozen.select(model) == frozen.select(model, "")


def test_exclude_and_train_norms():
    model = make_model()
    layer0 = frozen.select(model, "encoder.layer.0", exclude=nn.LayerNorm)
    assert layer0 == ["encoder.layer.0", "encoder.layer.0.0"]
    assert frozen.select(model, "encoder.layer.0", train_norms=True) == layer0
    assert frozen.select(model, "encoder", exclude=["encoder.layer", "encoder.embed"]) == ["encoder"]
    # Generic recipes: a type that matches nothing in exclude= is fine.
    assert frozen.select(model, "head", exclude=nn.BatchNorm2d) == ["head"]


def test_paths_skip_frozen_wrappers():
    model = nn.Sequential(frozen.Frozen(nn.Sequential(nn.Linear(2, 2))), nn.Linear(2, 2))
    assert frozen.select(model, "0.*") == ["0.0"]
    assert frozen.select(model, frozen.Frozen) == ["0", "0.0"]


@pytest.mark.parametrize(
    "target, match",
    [
        ("encoder.layers.0", r"'encoder.layers.0' matches no module.*closest existing paths: 'encoder.layer'"),
        ("heda", r"closest existing paths: 'head'"),
        ("head.wieght", r"matches no module or parameter path.*closest existing paths: 'head.weight'"),
        ("encoder..layer", r"empty segment"),
        ("encoder.layer.5-2", r"start is after its end.*'2-5'"),
        (nn.BatchNorm2d, r"module type BatchNorm2d matches no module.*Module types present"),
        (nn.Linear(1, 1), r"module object Linear is not part of the model"),
        (lambda p, m: False, r"predicate <lambda> matches no module"),
    ],
    ids=["typo-segment", "typo", "parameter", "empty-segment", "bad-range", "type", "object", "predicate"],
)
def test_no_match_and_malformed_raise(target, match):
    with pytest.raises(frozen.SelectorError, match=match):
        frozen.select(make_model(), target)


def test_exclude_pattern_typo_raises_and_bad_types():
    with pytest.raises(frozen.SelectorError, match="exclude pattern 'hed'"):
        frozen.select(make_model(), "head", exclude="hed")
    with pytest.raises(TypeError, match="path pattern .*received int 3"):
        frozen.select(make_model(), 3)
    with pytest.raises(TypeError, match="expected model to be a torch.nn.Module"):
        frozen.select(torch.zeros(2), "head")
    with pytest.raises(TypeError, match="train_norms"):
        frozen.select(make_model(), "head", train_norms="yes")


def test_one_argument_predicate_raises_naming_the_signature_and_changes_nothing():
    model = two_layers()
    before = snapshot(model)
    with pytest.raises((frozen.FrozenError, TypeError), match=r"predicate|\(path, module\)"):
        frozen.freeze(model, lambda module: isinstance(module, nn.Linear))
    assert_same(before, snapshot(model))
