"""The selector language of docs/selectors.md over Equinox paths, and its errors."""

import equinox as eqx
import jax
import pytest
from jax_nets import Blocks, Net

import frozen.jax as fj

NET = Net(key=jax.random.PRNGKey(0))
BLOCKS = Blocks(key=jax.random.PRNGKey(0))


def numbers(paths, prefix="blocks."):
    return [p[len(prefix) :] for p in paths if p.startswith(prefix) and p.count(".") == 1]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("blocks.*", [str(k) for k in range(8)]),
        ("blocks.0-2", ["0", "1", "2"]),  # range: both ends included
        ("blocks.0:2", ["0", "1"]),  # slice: end excluded
        ("blocks.-1", ["7"]),
        ("blocks.-2:", ["6", "7"]),
        ("blocks.:-6", ["0", "1"]),
        ("blocks.5:", ["5", "6", "7"]),
        ("blocks.-3:-1", ["5", "6"]),
        ("blocks.?", [str(k) for k in range(8)]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_positions(pattern, expected):
    assert numbers(fj.select(BLOCKS, pattern)) == expected


def test_paths_globs_double_stars_types_objects_and_predicates():
    assert fj.select(NET, "head") == ["head"]
    assert fj.select(NET, "head.weight") == ["head.weight"]
    assert fj.select(NET, "encoder.layers.1") == [
        "encoder.layers.1",
        *[f"encoder.layers.1.{n}" for n in ("linear", "norm", "dropout")],
    ]
    assert fj.select(NET, "**.norm") == [f"encoder.layers.{k}.norm" for k in range(4)]
    assert fj.select(NET, "*_norm") == ["final_norm"]
    assert fj.select(NET, "encoder.**.bias") == [
        f"encoder.layers.{k}.{n}.bias" for k in range(4) for n in ("linear", "norm")
    ]
    assert fj.select(NET, "**") == fj.select(NET, "")  # ** matches zero segments too: the whole model
    assert fj.select(NET, eqx.nn.LayerNorm) == fj.select(NET, "**.norm", "final_norm")
    assert fj.select(NET, (eqx.nn.Dropout, eqx.nn.LayerNorm)) == sorted(
        fj.select(NET, "**.dropout", "**.norm", "final_norm"), key=fj.select(NET, "").index
    )
    assert fj.select(NET, NET.head) == ["head"]
    assert fj.select(NET, NET.head.bias) == ["head.bias"]
    assert fj.select(NET, lambda path, m: path.endswith("linear")) == [f"encoder.layers.{k}.linear" for k in range(4)]


def test_exclude_removes_subtrees_and_an_excluded_array_demotes_its_module():
    chosen = fj.select(NET, "encoder", exclude=["encoder.layers.0", eqx.nn.Dropout])
    assert "encoder.layers.0" not in chosen and "encoder.layers.0.linear" not in chosen
    assert "encoder.layers.1.linear" in chosen and "encoder.layers.1.dropout" not in chosen
    assert fj.select(NET, "head", exclude="head.bias") == ["head.weight"]
    assert fj.select(NET, "head", exclude=eqx.nn.BatchNorm) == ["head"]  # types may match nothing in exclude=


def test_an_unknown_path_names_the_closest_existing_paths():
    with pytest.raises(fj.SelectorError) as caught:
        fj.select(NET, "encoder.layer.0")
    message = str(caught.value)
    assert "'encoder.layer.0' matches no module or array path" in message and "'encoder.layers.0'" in message
    assert "fj.select(model, '**')" in message


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("encoder..layers", "empty segment"),
        ("blocks.-0", "-0 is 0 in Python"),
        ("blocks.-0:", "-0 is 0 in Python"),
        ("blocks.5-2", "start is after its end"),
        ("blocks.5:2", "start is after its end"),
        ("blocks.::2", "not a slice"),
    ],
)
def test_malformed_patterns_raise(pattern, problem):
    with pytest.raises(fj.SelectorError, match=problem):
        fj.select(BLOCKS, pattern)


def test_other_errors_name_what_was_expected_and_the_fix():
    with pytest.raises(fj.SelectorError, match=r'fj.freeze\(model, ""\)'):
        fj.freeze(NET)
    with pytest.raises(TypeError, match=r"Unpack a list of targets: fj.freeze\(model, \*targets\)"):
        fj.freeze(NET, ["head"])
    with pytest.raises(TypeError, match="received int 3"):
        fj.select(NET, 3)
    with pytest.raises(fj.SelectorError, match="exclude pattern 'hed' matches no module"):
        fj.select(NET, "", exclude="hed")
    with pytest.raises(fj.SelectorError, match="type BatchNorm matches no module of the model"):
        fj.select(NET, eqx.nn.BatchNorm)
    with pytest.raises(fj.SelectorError, match="not part of the model"):
        fj.select(NET, eqx.nn.Linear(2, 2, key=jax.random.PRNGKey(0)))


def test_one_bad_target_among_good_ones_raises_and_returns_nothing():
    with pytest.raises(fj.SelectorError, match="'nope'"):
        fj.freeze(NET, "head", "nope")
    with pytest.raises(fj.SelectorError, match="'nope'"):
        fj.thaw(fj.freeze(NET, "head"), "head", "nope")
