"""Rows of a parameter that is also frozen whole: every call answers, or refuses and changes nothing.

A parameter frozen whole needs no gradient, so it can take no gradient hook. Freezing rows of
it is refused with the fix (thaw it first); rows frozen before the whole freeze stay recorded,
thawing some of them changes the record, and the model keeps working throughout -- before,
such calls failed with torch's "cannot register a hook on a tensor that doesn't require
gradient" *after* dropping the old rows, and every later call on the model failed the same way.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from model_state import assert_same_state, model_state
from torch import nn

import frozen
from frozen._rows.rows import frozen_rows


def build() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict(dict(emb=nn.Embedding(12, 4), head=nn.Linear(4, 3)))


def loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.head(torch.tanh(model.emb(ids))).pow(2).mean()


IDS = torch.arange(12).reshape(3, 4)


def rows_then_whole() -> nn.ModuleDict:
    model = frozen.freeze(build(), frozen.Rows("emb.weight", [0, 1]))
    return frozen.freeze(model, "")


def works(model: nn.Module) -> None:
    """Forward, the queries and thaw(model) all answer; after the thaw every row trains."""
    loss(model, IDS)
    frozen.state(model)
    frozen.trainable(model)
    frozen.report(model)
    frozen.thaw(model)
    assert frozen_rows(model) == {} and frozen.state(model)["rows"] == {}
    before = model.emb.weight.detach().clone()
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=0.1, weight_decay=0.1)
    loss(model, IDS).backward()
    optimizer.step()
    assert (model.emb.weight != before).any(dim=1).all()


def test_thawing_some_rows_of_a_parameter_frozen_whole_updates_its_rows_and_keeps_it_frozen() -> None:
    model = rows_then_whole()
    frozen.thaw(model, frozen.Rows("emb.weight", [0]))
    assert frozen.state(model)["rows"] == {"emb.weight": {"rows": 12, "frozen": [[1, 2]]}}
    assert not model.emb.weight.requires_grad and frozen.trainable(model) == []  # still frozen whole
    frozen.thaw(model, "head")  # the head trains again; the embedding stays frozen whole
    assert frozen.trainable(model) == [model.head.weight, model.head.bias]
    works(model)


@pytest.mark.parametrize(
    "target",
    [
        frozen.Rows("emb.weight", [3]),  # other rows of the parameter frozen whole
        frozen.Rows("emb.weight", [0]),  # rows frozen already
        frozen.Rows("emb.weight", trainable=[5]),
    ],
    ids=repr,
)
def test_freezing_rows_of_a_parameter_frozen_whole_over_its_rows_is_refused_and_changes_nothing(target) -> None:
    model = rows_then_whole()
    before = model_state(model)
    with pytest.raises(frozen.FrozenError, match=r"'emb.weight' is frozen whole.*frozen.thaw\(model, 'emb'\)"):
        frozen.freeze(model, target)
    assert_same_state(before, model_state(model))
    assert frozen.state(model)["rows"] == {"emb.weight": {"rows": 12, "frozen": [[0, 2]]}}
    works(model)


def test_freezing_rows_of_a_parameter_already_frozen_whole_is_refused_with_the_fix() -> None:
    model = frozen.freeze(build(), "emb")
    before = model_state(model)
    with pytest.raises(frozen.FrozenError, match=r"Rows\('emb.weight', \[0\]\).*'emb.weight' is frozen whole") as error:
        frozen.freeze(model, frozen.Rows("emb.weight", [0]))
    assert "frozen.thaw(model, 'emb')" in str(error.value) and "Nothing was changed" in str(error.value)
    assert_same_state(before, model_state(model))
    frozen.thaw(model, "emb")
    frozen.freeze(model, frozen.Rows("emb.weight", [0]))  # the fix works
    assert frozen_rows(model)["emb.weight"].frozen.tolist() == [0]
    frozen.thaw(model)


def test_freezing_rows_of_a_parameter_frozen_by_hand_is_refused_with_the_fix() -> None:
    model = build()
    model.emb.weight.requires_grad_(False)
    before = model_state(model)
    with pytest.raises(frozen.FrozenError, match=r"'emb.weight' is frozen whole.*requires_grad is False, set by hand"):
        frozen.freeze(model, frozen.Rows("emb.weight", [0]))
    assert_same_state(before, model_state(model))


def test_freezing_a_part_and_rows_of_its_parameter_in_one_call_freezes_both() -> None:
    model = frozen.freeze(build(), "emb", frozen.Rows("emb.weight", [0, 1]))  # as two calls in that order
    assert not model.emb.weight.requires_grad
    assert frozen.state(model)["rows"] == {"emb.weight": {"rows": 12, "frozen": [[0, 2]]}}
    works(model)


def copied(model: nn.Module, how: str) -> nn.Module:
    if how == "deepcopy":
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copy_frozen_whole_over_its_rows_thaws_some_rows_and_then_trains_with_the_others_frozen(how) -> None:
    model = frozen.freeze(build(), frozen.Rows("emb.weight", [0, 1, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frozen.freeze(model, "emb")
    copy_ = copied(model, how)
    frozen.thaw(copy_, frozen.Rows("emb.weight", [2]))
    assert frozen_rows(copy_)["emb.weight"].frozen.tolist() == [0, 1]
    assert frozen_rows(model)["emb.weight"].frozen.tolist() == [0, 1, 2]  # the original keeps its own
    works(copy_)
    works(model)


def test_a_functional_use_of_a_thawed_weight_has_no_frozen_rows_left() -> None:
    model = rows_then_whole()
    frozen.thaw(model)
    weight = model.emb.weight
    F.embedding(IDS, weight).sum().backward()
    assert torch.count_nonzero(weight.grad[IDS.flatten()], dim=1).all()  # no hook left zeroing rows
