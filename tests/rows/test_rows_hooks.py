"""Row freezing's hooks are held by their handles and leave through them, on a model and on its copies.

The gradient hook on the parameter and the forward pre-hook on each module holding it are
registered through torch's public API, kept as ``RemovableHandle``s in the row record, and
removed with ``.remove()``: nothing deletes entries from torch's private hook dictionaries.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from tiny_models import TiedVocabulary
from torch import nn
from torch.utils.hooks import RemovableHandle

import frozen


def hooks_of(model: TiedVocabulary) -> tuple[int, int, int]:
    return len(model.emb._forward_pre_hooks), len(model.out._forward_pre_hooks), len(model.emb.weight._backward_hooks)


def hook_keys(model: TiedVocabulary) -> set[tuple[int, int]]:
    """``(id of the hook dict, key)`` of every hook row freezing put on the model's modules and weight."""
    dicts = (model.emb._forward_pre_hooks, model.out._forward_pre_hooks, model.emb.weight._backward_hooks)
    return {(id(d), key) for d in dicts for key in d}


@pytest.fixture
def removed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """``(id of the hook dict, key)`` of every hook removed through ``RemovableHandle.remove``."""
    keys: list[tuple[int, int]] = []
    remove = RemovableHandle.remove

    def counting_remove(self: RemovableHandle) -> None:
        hooks = self.hooks_dict_ref()
        if hooks is not None and self.id in hooks:
            keys.append((id(hooks), self.id))
        remove(self)

    monkeypatch.setattr(RemovableHandle, "remove", counting_remove)
    return keys


@pytest.mark.parametrize("on", ["the model", "a deepcopy", "a torch.load copy"])
def test_thawing_rows_removes_every_hook_through_its_handle(removed: list, on: str) -> None:
    original = frozen.freeze(TiedVocabulary(), frozen.Rows("emb.weight", [0, 1]))
    model = {"the model": lambda m: m, "a deepcopy": copy.deepcopy, "a torch.load copy": loaded}[on](original)
    model(torch.tensor([[1, 2]])).sum().backward()  # a forward and a backward on it first
    assert hooks_of(model) == (1, 1, 1)  # one pre-hook per module holding the weight, one gradient hook
    keys = hook_keys(model)
    frozen.thaw(model, "emb.weight")
    assert hooks_of(model) == (0, 0, 0)
    assert keys <= set(removed)  # every one of them left through its handle's .remove()
    assert "_frozen" not in model.emb.__dict__ and "_frozen" not in model.out.__dict__  # records gone
    if model is not original:
        assert hooks_of(original) == (1, 1, 1)  # the copy's handles reached the copy's hooks only
        frozen.thaw(original)


def test_freezing_other_rows_replaces_the_gradient_hook_through_its_handle(removed: list) -> None:
    model = frozen.freeze(TiedVocabulary(), frozen.Rows("emb.weight", [0, 1]))
    weight_hooks = model.emb.weight._backward_hooks
    (first,) = weight_hooks
    frozen.freeze(model, frozen.Rows("emb.weight", [2]))
    assert hooks_of(model) == (1, 1, 1) and first not in weight_hooks
    assert removed == [(id(weight_hooks), first)]  # the old gradient hook, by its handle; the pre-hooks stay
    keys = hook_keys(model)
    frozen.thaw(model)
    assert hooks_of(model) == (0, 0, 0) and keys <= set(removed)


def loaded(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)
