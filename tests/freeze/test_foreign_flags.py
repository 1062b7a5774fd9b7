"""A flag switched on outside frozen inside a frozen part: every answer follows the gradient, one warning, settle restores.

``frozen.freeze(model, "0")`` then ``model[0].weight.requires_grad_(True)``: the weight gets a
gradient (a settled frozen use detaches only what trains elsewhere). ``trainable``, ``is_frozen``,
``report``, ``explain``, ``grad`` and ``frozen.optim`` say so, the first of them warns once
(``ForeignFlagWarning``: the path, who likely did it, both fixes), and ``settle`` turns the flag
off again (docs/freeze.md, "Flags flipped outside frozen").
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import two_layers
from torch import nn

import frozen

FIXES = r"frozen\.settle\(model\).*frozen\.thaw\(model, '0'\)"


def flipped() -> nn.Sequential:
    model = frozen.freeze(two_layers(), "0")
    model[0].weight.requires_grad_(True)  # by hand, after the freeze
    return model


def backward(model: nn.Module) -> set[str]:
    """Names of the parameters that get a gradient from one real backward pass."""
    model.zero_grad(set_to_none=True)
    model(torch.randn(8, 4, generator=torch.Generator().manual_seed(0))).square().mean().backward()
    return {name for name, p in model.named_parameters() if p.grad is not None}


def told(call, *args, **kwargs):
    """Run ``call`` and return (its result, the ForeignFlagWarning messages it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(*args, **kwargs)
    assert all(issubclass(w.category, frozen.ForeignFlagWarning) for w in caught), [str(w.message) for w in caught]
    return result, [str(w.message) for w in caught]


def test_a_flag_switched_on_by_hand_trains_and_every_answer_says_so():
    model = flipped()
    model[1].bias.requires_grad_(False)  # the reverse flip, the user's own freeze: left alone as before
    with pytest.warns(frozen.ForeignFlagWarning, match=r"your code or another library.*'0\.weight'.*" + FIXES):
        names = {name for name, _ in frozen.named_trainable(model)}
    assert backward(model) == names == {"0.weight", "1.weight"}
    assert not frozen.is_frozen(model, "0.weight") and frozen.is_frozen(model, "0.bias")
    assert not frozen.is_frozen(model, "0")  # a gradient flows into it
    rows = {row.path: row for row in frozen.report(model).rows}
    assert rows["0"].state == "mixed (flag flipped outside frozen)" and rows["0"].flipped_by == "outside"
    assert rows["1"].state == "mixed" and rows["1"].flipped_by == ""
    assert "mixed (flag flipped outside frozen)" in str(frozen.report(model))
    assert frozen.report(model).trainable_params == 16 + 2 * 4  # 0.weight, 1.weight
    answer = frozen.explain(model, "0.weight")
    assert answer.trains and answer.causes == ("flipped",)
    assert "frozen.settle(model)" in str(answer) and "frozen.thaw(model, '0')" in str(answer)
    grads = frozen.grad(model(torch.ones(1, 4)).sum(), model)
    assert {k for k, v in grads.items() if v is not None} == names
    frozen.thaw(model)  # the user's own requires_grad=False stays: thaw undoes only what frozen did
    assert not model[1].bias.requires_grad and backward(model) == {"0.weight", "0.bias", "1.weight"}


def test_the_warning_comes_once_per_flip_not_at_every_call():
    model = flipped()
    _, first = told(frozen.trainable, model)
    assert len(first) == 1 and "'0.weight'" in first[0]
    for call in (frozen.trainable, frozen.report, frozen.named_trainable, frozen.optim.param_groups):
        assert told(call, model)[1] == []  # a training loop asking each step is not spammed
    model[0].weight.requires_grad_(False)  # switched off again by hand: nothing to tell
    assert told(frozen.trainable, model) == ([model[1].weight, model[1].bias], [])
    model[0].weight.requires_grad_(True)  # a new flip: told again
    assert len(told(frozen.is_frozen, model, "0")[1]) == 1


@pytest.mark.parametrize("refreeze", ["settle", "freeze again", "freeze another part", "thaw another part"])
def test_settle_turns_the_flag_off_again_and_the_answers_follow(refreeze):
    model = flipped()
    model.append(nn.Identity())
    with pytest.warns(frozen.ForeignFlagWarning):
        frozen.trainable(model)
    before = model[0].weight.detach().clone()
    calls = {
        "settle": lambda: frozen.settle(model),
        "freeze again": lambda: frozen.freeze(model, "0"),
        "freeze another part": lambda: frozen.freeze(model, "2"),
        "thaw another part": lambda: frozen.thaw(model, "2"),
    }
    calls[refreeze]()  # already told: no second warning (pytest turns one into an error)
    assert not model[0].weight.requires_grad
    assert backward(model) == {name for name, _ in frozen.named_trainable(model)} == {"1.weight", "1.bias"}
    assert frozen.is_frozen(model, "0") and frozen.is_frozen(model, "0.weight")
    assert {row.path: row.state for row in frozen.report(model).rows}["0"] == "frozen"
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        backward(model)
        optimizer.step()
    assert torch.equal(model[0].weight, before)


def test_settle_warns_when_it_restores_a_flip_no_call_had_told():
    model = flipped()
    model(torch.ones(1, 4)).sum().backward()  # the flipped weight got a gradient
    with pytest.warns(frozen.ForeignFlagWarning, match=r"frozen\.settle: set requires_grad=False again.*'0\.weight'"):
        frozen.settle(model)
    assert not model[0].weight.requires_grad and model[0].weight.grad is None  # no stale gradient for an optimizer
    assert told(frozen.trainable, model)[1] == []


def test_thaw_accepts_the_flip_quietly():
    model = flipped()
    with pytest.warns(frozen.ForeignFlagWarning, match=r"frozen\.thaw\(model, '0'\)"):
        frozen.trainable(model)
    frozen.thaw(model, "0")  # the flag that was switched on is part of the contract now: nothing to tell
    assert (
        backward(model)
        == {name for name, _ in frozen.named_trainable(model)}
        == {n for n, _ in model.named_parameters()}
    )
    assert all(p.requires_grad for p in model.parameters())
    assert told(frozen.report, model)[1] == []


def test_an_optimizer_built_from_trainable_trains_exactly_what_gets_gradients():
    for build in (
        lambda m: torch.optim.AdamW(frozen.trainable(m), lr=0.1),
        lambda m: torch.optim.AdamW(frozen.optim.param_groups(m, lr=0.1)),
    ):
        model = flipped()
        with pytest.warns(frozen.ForeignFlagWarning):
            optimizer = build(model)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        got = backward(model)
        optimizer.step()
        assert {id(model.get_parameter(name)) for name in got} == held
        changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
        assert changed == got == {"0.weight", "1.weight", "1.bias"}


def test_sync_takes_a_flipped_parameter_in_and_out_again_after_settle():
    model = frozen.freeze(two_layers(), "0")
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1, momentum=0.9)
    model[0].weight.requires_grad_(True)
    with pytest.warns(frozen.ForeignFlagWarning, match=r"frozen\.optim\.sync:.*'0\.weight'"):
        frozen.optim.sync(optimizer, model)
    assert any(p is model[0].weight for group in optimizer.param_groups for p in group["params"])
    before = model[0].weight.detach().clone()
    backward(model)
    optimizer.step()
    assert not torch.equal(model[0].weight, before)
    frozen.settle(model)  # re-freeze (told already: quiet)
    frozen.optim.sync(optimizer, model)
    assert not any(p is model[0].weight for group in optimizer.param_groups for p in group["params"])
    before = model[0].weight.detach().clone()
    for _ in range(2):
        backward(model)
        optimizer.step()
    assert torch.equal(model[0].weight, before)


def test_a_flag_switched_on_inside_a_settled_frozen_wrapper_is_seen_too():
    model = nn.Sequential(frozen.Frozen(nn.Linear(4, 4)), nn.Linear(4, 2))
    # Never settled, the wrapper's flags are still on and it detaches them per call: nothing to report.
    assert told(frozen.named_trainable, model) == ([("1.weight", model[1].weight), ("1.bias", model[1].bias)], [])
    assert backward(model) == {"1.weight", "1.bias"}
    frozen.settle(model)
    model[0].module.bias.requires_grad_(True)
    with pytest.warns(frozen.ForeignFlagWarning, match=r"'0\.bias'.*replace the frozen\.Frozen wrapper above '0'"):
        named = frozen.named_trainable(model)
    assert [name for name, _ in named] == ["0.bias", "1.weight", "1.bias"]
    assert backward(model) == {"0.module.bias", "1.weight", "1.bias"}  # torch's names: the wrapper's level shows
