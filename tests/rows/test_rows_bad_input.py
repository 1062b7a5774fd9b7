"""Bad rows are refused with frozen's errors, naming the argument and the fix, and change nothing.

Before, a string, an int too large for int64 or an index tensor on the ``meta`` device reached
torch's own conversions (``new(): invalid data type 'str'``, ``Overflow when unpacking long``,
``Cannot copy out of meta tensor``), and ``frozen.load_state`` truncated float row bounds
silently while it validated everything else.
"""

from __future__ import annotations

import pytest
import torch
from model_state import assert_same_state, model_state
from torch import nn

import frozen


def build() -> nn.ModuleDict:
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(emb=nn.Embedding(12, 4), head=nn.Linear(4, 3)))
    return frozen.freeze(model, frozen.Rows("emb.weight", [5]))  # rows frozen before: they must stay


BAD_KINDS = {
    "a string": "0-3",
    "floats": [0.5, 1.0],
    "a float tensor": torch.tensor([0.0, 1.0]),
    "a nested list": [[0, 1], [2, 3]],
    "a list holding a string": [0, "1"],
    "an index tensor on meta": torch.tensor([1], device="meta"),
    "a mask on meta": torch.ones(12, dtype=torch.bool, device="meta"),
    "a bool": True,
    "a set": {0, 1},
    "a slice of strings": slice("a", "b"),
}


@pytest.mark.parametrize("argument", ["rows", "trainable"])
@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_rows_of_a_kind_that_names_no_rows_are_refused_when_the_target_is_built(kind: str, argument: str) -> None:
    model = build()
    before = model_state(model)
    with pytest.raises(frozen.FrozenError, match=rf"frozen.Rows\('emb.weight', {argument}=\.\.\.\): ") as error:
        frozen.freeze(model, frozen.Rows("emb.weight", **{argument: BAD_KINDS[kind]}))
    assert isinstance(error.value, TypeError)  # the type of an argument is wrong: a TypeError too
    assert "expected" in str(error.value) and ("Pass" in str(error.value) or "pass" in str(error.value))
    assert_same_state(before, model_state(model))


OUT_OF_RANGE = {
    "an int beyond int64": [2**63],
    "a negative int beyond int64": [-(2**64)],
    "an int beyond the rows": [12],
    "a range beyond the rows": range(10, 14),
    "a tensor beyond the rows": torch.tensor([0, -13]),
}


@pytest.mark.parametrize("kind", list(OUT_OF_RANGE))
def test_rows_out_of_range_are_refused_naming_the_argument_and_the_range(kind: str) -> None:
    model = build()
    before = model_state(model)
    with pytest.raises(
        frozen.FrozenError,
        match=r"frozen.freeze\(model, Rows\('emb.weight'.*in rows=, row -?\d+ is out of range for 12 rows; expected indices in \[-12, 12\)",
    ):
        frozen.freeze(model, frozen.Rows("emb.weight", OUT_OF_RANGE[kind]))
    with pytest.raises(frozen.FrozenError, match=r"in trainable=, row -?\d+ is out of range"):
        frozen.thaw(model, frozen.Rows("emb.weight", trainable=OUT_OF_RANGE[kind]))
    assert_same_state(before, model_state(model))


def test_a_mask_of_the_wrong_length_is_refused_naming_the_argument() -> None:
    model = build()
    before = model_state(model)
    with pytest.raises(
        frozen.FrozenError, match=r"rows= is a boolean mask, which needs shape \(12,\).*received \(3,\)"
    ):
        frozen.freeze(model, frozen.Rows("emb.weight", torch.ones(3, dtype=torch.bool)))
    assert_same_state(before, model_state(model))


def test_rows_given_as_lists_of_bools_or_numpy_style_ints_name_rows() -> None:
    model = build()
    frozen.freeze(model, frozen.Rows("emb.weight", [True] + [False] * 11))  # a mask, as a bool tensor is
    frozen.freeze(model, frozen.Rows("emb.weight", [torch.tensor(7).item(), -1]))
    assert frozen.state(model)["rows"] == {"emb.weight": {"rows": 12, "frozen": [[0, 1], [5, 6], [7, 8], [11, 12]]}}
    frozen.thaw(model)


def saved_with(rows: object) -> dict:
    state = frozen.state(build())
    state["rows"] = rows
    return state


EDITED = {
    "float bounds": {"emb.weight": {"rows": 12, "frozen": [[0.5, 2.7]]}},
    "integral float bounds": {"emb.weight": {"rows": 12, "frozen": [[0.0, 2.0]]}},
    "a float row count": {"emb.weight": {"rows": 12.0, "frozen": [[0, 2]]}},
    "bool bounds": {"emb.weight": {"rows": 12, "frozen": [[False, True]]}},
    "string bounds": {"emb.weight": {"rows": 12, "frozen": [["0", "2"]]}},
    "a run of three": {"emb.weight": {"rows": 12, "frozen": [[0, 1, 2]]}},
    "no row count": {"emb.weight": {"frozen": [[0, 2]]}},
    "not a dict": {"emb.weight": [[0, 2]]},
}


@pytest.mark.parametrize("edit", list(EDITED))
def test_load_state_refuses_rows_that_are_not_whole_numbers_naming_the_key(edit: str) -> None:
    model = build()
    before = model_state(model)
    with pytest.raises(frozen.FrozenError, match=r"'rows' entry 'emb.weight'.*expected \{'rows': int, 'frozen'"):
        frozen.load_state(model, saved_with(EDITED[edit]))
    assert_same_state(before, model_state(model))
    assert frozen.state(model)["rows"] == {"emb.weight": {"rows": 12, "frozen": [[5, 6]]}}
    frozen.load_state(model, saved_with({"emb.weight": {"rows": 12, "frozen": [[0, 2]]}}))  # the unedited state
    assert frozen.state(model)["rows"] == {"emb.weight": {"rows": 12, "frozen": [[0, 2]]}}
    frozen.thaw(model)
