"""Stand-ins: one chain per attribute, in a fixed order, whatever the order of the calls; one copy rule.

``frozen`` stands in for ``forward``, ``train`` and ``_apply`` in a module's ``__dict__``.
Whatever stood there before -- the module's own instance attribute (Accelerate's hooks set
one), another of frozen's stand-ins -- stays behind it and is called, and comes back exactly
when the stand-in goes. Something put in front of a stand-in later keeps working when the
stand-in is removed. Copies keep every stand-in working for the copy, except a cached
part's, which becomes a pass-through (the store is the original's).
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from cached_models import CHECK
from torch import nn

import frozen
from frozen._core import StandIn, install, remove, standing


class _Layer(StandIn):
    """A stand-in for ``forward`` that adds its mark to the output of the layers behind it."""

    def __init__(self, module: nn.Module, layer: str, mark: float) -> None:
        super().__init__(module)
        self.layer, self.mark = layer, mark

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.call_previous(x) * 10 + self.mark


class _Own:
    """A module's own instance attribute (as Accelerate's hooks set), calling the class's method; counts calls."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module, self.name, self.calls = module, name, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return getattr(type(self.module), self.name)(self.module, *args, **kwargs)


LAYERS = (("cache", 1.0), ("lean", 2.0), ("guard", 3.0))


@pytest.mark.parametrize("own", [False, True], ids=["class forward", "own instance forward"])
@pytest.mark.parametrize("installed", list(itertools.permutations(range(3))), ids=str)
def test_layers_stand_in_their_fixed_order_whatever_the_order_of_install_and_remove(installed, own) -> None:
    module = nn.Identity()
    if own:
        module.__dict__["forward"] = _Own(module, "forward")
    before = dict(module.__dict__)
    layers = [_Layer(module, name, mark) for name, mark in LAYERS]
    for index in installed:
        install(module, layers[index])
    assert standing(module, "forward") == layers  # cache, lean, guard: outermost first
    assert module(torch.zeros(())).item() == 321.0  # the guard runs first (innermost), the cache last
    for removed in itertools.permutations(range(3)):
        chain = list(layers)
        for index in removed:
            remove(module, layers[index])
            chain.remove(layers[index])
            assert standing(module, "forward") == chain
            expected = 0.0
            for layer in reversed(chain):
                expected = expected * 10 + layer.mark
            assert module(torch.zeros(())).item() == expected
        assert module.__dict__ == before
        for index in installed:
            install(module, layers[index])


def test_a_module_own_forward_stays_behind_the_guard_and_the_cache_and_comes_back() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    own = model[0].__dict__["forward"] = _Own(model[0], "forward")
    x = torch.randn(3, 4)
    frozen.freeze(model, "0")
    frozen.cache(model, "0")
    model(x)
    model(x)
    assert own.calls == 1 + CHECK  # a miss runs the module's own forward, behind the cache and the guard
    frozen.thaw(model, "0")
    frozen.uncache(model, "0")
    assert model[0].__dict__["forward"] is own and "_frozen" not in model[0].__dict__


def test_a_wrapper_put_in_front_of_the_guard_keeps_working_after_thaw_and_leaves_nothing_behind() -> None:
    # Accelerate's add_hook_to_module: module.forward = new_forward(old module.forward), undone by
    # putting the old one back. The guard behind it cannot be unlinked at thaw: it passes calls on.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    x = torch.randn(3, 4)
    frozen.freeze(model, "0")
    held = model[0].forward
    model[0].forward = lambda *args: held(*args) * 2
    frozen.thaw(model, "0")
    model(x).sum().backward()
    assert model[0].weight.grad is not None  # thawed: the guard behind the wrapper no longer detaches
    expected = model[1](nn.functional.linear(x, model[0].weight, model[0].bias) * 2)
    torch.testing.assert_close(model(x), expected)
    model[0].forward = held  # the wrapper is taken off
    frozen.freeze(model, "0")
    frozen.thaw(model, "0")
    assert "forward" not in model[0].__dict__ and "_frozen" not in model[0].__dict__


def test_the_eval_stand_in_runs_the_module_own_train_behind_it() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    own = model[1].__dict__["train"] = _Own(model[1], "train")
    frozen.freeze(model, "1")
    model.train()
    assert own.calls == 1 and not model[1].training  # its own train ran, and the part stays in eval
    x = torch.randn(8, 4)
    torch.testing.assert_close(model(x), model[0](x))  # Dropout is the identity
    frozen.thaw(model, "1")
    assert model[1].__dict__["train"] is own and model[1].training
    model.eval()
    assert own.calls == 2 and not model[1].training


def _convbn() -> nn.Sequential:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    return nn.Sequential(nn.Conv2d(3, 3, 1), block, nn.Flatten(), nn.Linear(4 * 8 * 8, 2))


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes saved for backward by one forward, each storage once, the model's own tensors excluded."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        pointer = t.untyped_storage().data_ptr()
        if pointer not in own | seen:
            seen.add(pointer)
            sizes.append(t.untyped_storage().nbytes())
        return t

    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return sum(sizes), out


def _through_torch_save(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": _through_torch_save,
}


@pytest.mark.parametrize("make_copy", COPIES.values(), ids=COPIES.keys())
def test_a_copy_of_a_lean_model_is_lean_and_trains_like_it(make_copy: Callable[[nn.Module], nn.Module]) -> None:
    model = frozen.lean(frozen.freeze(_convbn(), "1"), "1")
    plain = frozen.thaw(copy.deepcopy(model))  # thawed: plain and trained, saves what torch saves
    x = torch.randn(2, 3, 8, 8)
    _saved_bytes(model, x)  # worked out its fold
    copied = make_copy(model)
    saved, out = _saved_bytes(copied, x)
    lean_saved, lean_out = _saved_bytes(model, x)
    plain_saved, _ = _saved_bytes(plain, x)
    assert saved == lean_saved < plain_saved
    torch.testing.assert_close(out, lean_out)
    frozen_before = copy.deepcopy(copied[1].state_dict())
    optimizer = torch.optim.SGD(frozen.trainable(copied), lr=0.1, momentum=0.9, weight_decay=0.1)
    stem = copied[0].weight.clone()
    out.square().mean().backward()
    optimizer.step()
    assert not torch.equal(copied[0].weight, stem)  # gradients crossed the lean middle
    assert all(torch.equal(v, frozen_before[k]) for k, v in copied[1].state_dict().items())
    assert all(p.grad is None for p in copied[1].parameters())
    frozen.unlean(copied)
    frozen.thaw(copied)
    assert not any(k in m.__dict__ for m in copied.modules() for k in ("forward", "train", "_frozen"))


@pytest.mark.parametrize("make_copy", COPIES.values(), ids=COPIES.keys())
def test_a_copy_of_a_cached_model_runs_uncached_and_can_be_cached_undone_and_thawed(make_copy) -> None:
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), "0")
    frozen.cache(model, "0")
    x = torch.randn(3, 4)
    model(x)
    copied = make_copy(model)
    torch.testing.assert_close(copied(x), model(x))
    assert frozen.cache_stats(copied) == {}  # uncached: the store is the original's
    handle = frozen.cache(copied, "0")
    copied(x)
    copied(x)
    assert handle.stats()["0"]["hits"] == 3
    params = {k: v.detach() for k, v in copied.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(copied, p, (x,)).sum())(params)
    assert grads["0.weight"].abs().sum() == 0 and grads["1.weight"].abs().sum() > 0  # the guard is behind
    frozen.uncache(copied)
    frozen.thaw(copied)
    assert "forward" not in copied[0].__dict__ and "_frozen" not in copied[0].__dict__
