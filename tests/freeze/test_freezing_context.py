"""frozen.freezing(): construction-time freezing (S7)."""

import asyncio
import copy
import threading

import pytest
import torch
from torch import nn

import frozen


def test_modules_built_inside_are_frozen_outside_untouched():
    outside = nn.Linear(3, 3)
    with frozen.freezing():
        backbone = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5), outside)
    model = nn.Sequential(backbone, nn.Linear(3, 1))
    assert [n for n, _ in frozen.named_trainable(model)] == ["0.2.weight", "0.2.bias", "1.weight", "1.bias"]
    assert not backbone[0].weight.requires_grad and outside.weight.requires_grad
    model.train()
    assert not backbone.training and not backbone[1].training and outside.training
    weight = backbone[0].weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 2)).sum().backward()
        opt.step()
    assert torch.equal(weight, backbone[0].weight) and backbone[0].weight.grad is None
    assert all(not m._forward_pre_hooks for m in backbone.modules())  # settled: plain calls


def test_thaw_undoes_freezing_exactly():
    with frozen.freezing():
        part = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    frozen.thaw(part)
    assert all(p.requires_grad for p in part.parameters()) and part.training and part[1].training
    assert all(
        sorted(m.__dict__) == sorted(nn.Linear(1, 1).__dict__) or not isinstance(m, nn.Linear) for m in part.modules()
    )


def test_lazy_parameters_stay_frozen_when_they_materialise():
    with frozen.freezing():
        lazy = nn.LazyLinear(3)
    lazy(torch.randn(2, 5))
    assert isinstance(lazy.weight, nn.Parameter) and not lazy.weight.requires_grad
    assert frozen.trainable(nn.Sequential(lazy, nn.Linear(3, 1)))[0].shape == (1, 3)


def test_parameter_added_later_is_excluded_and_settled():
    with frozen.freezing():
        part = nn.Linear(2, 2)
    part.extra = nn.Parameter(torch.ones(2))
    model = nn.Sequential(part)
    assert frozen.trainable(model) == []
    frozen.settle(model)
    assert not part.extra.requires_grad


def test_nesting_modes_and_exceptions_restore_global_state():
    original = nn.Module.__init__
    with frozen.freezing():
        a = nn.Linear(1, 1)
        with frozen.freezing(mode="inherit"):
            b = nn.Linear(1, 1)
        with pytest.raises(RuntimeError):
            with frozen.freezing():
                c = nn.Linear(1, 1)
                raise RuntimeError("boom")
    assert nn.Module.__init__ is original
    after = nn.Linear(1, 1)
    assert frozen.state(nn.Sequential(a, b, c, after))["frozen"] == [
        {"path": "0", "mode": "eval", "tied": "freeze", "training": True, "tied_slots": []},
        {"path": "1", "mode": "inherit", "tied": "freeze", "training": True, "tied_slots": []},
        {"path": "2", "mode": "eval", "tied": "freeze", "training": True, "tied_slots": []},
    ]
    assert after.weight.requires_grad
    with pytest.raises(frozen.InvalidModeError, match="mode='off'"):
        with frozen.freezing(mode="off"):
            pass
    assert nn.Module.__init__ is original


def test_other_threads_are_not_affected():
    made = {}
    started, release = threading.Event(), threading.Event()

    def build_elsewhere():
        started.wait()
        made["layer"] = nn.Linear(1, 1)
        release.set()

    thread = threading.Thread(target=build_elsewhere)
    thread.start()
    with frozen.freezing():
        started.set()
        release.wait(timeout=30)
    thread.join()
    assert made["layer"].weight.requires_grad and not frozen.is_frozen(made["layer"])


# -- freezing() and other code of the process ----------------------------------------------------------------


def test_freezing_keeps_another_librarys_later_init_patch():
    original = nn.Module.__init__
    seen = []

    def patched(self, *args, **kwargs):
        seen.append(type(self).__name__)
        original(self, *args, **kwargs)

    nn.Module.__init__ = patched
    try:
        with frozen.freezing():
            nn.Linear(2, 2)
        assert "Linear" in seen  # the other library's patch ran inside the block
        assert nn.Module.__init__ is patched  # and is still installed after it
        nn.Linear(2, 2)
        assert seen.count("Linear") == 2
    finally:
        nn.Module.__init__ = original


def test_freezing_freezes_a_deepcopy_made_inside_the_block():
    base = nn.Linear(2, 2)
    with frozen.freezing():
        made = copy.deepcopy(base)
    assert frozen.trainable(made) == [] and not made.weight.requires_grad
    assert frozen.trainable(base) == [base.weight, base.bias] and base.weight.requires_grad


def test_freezing_in_a_suspended_generator_does_not_freeze_other_code_of_the_thread():
    def builder():
        with frozen.freezing():
            inside = nn.Linear(2, 2)
            yield
        yield inside

    first, second = builder(), builder()
    next(first)
    next(second)  # two blocks open, interleaved
    unrelated = nn.Linear(2, 2)  # built by code outside both blocks
    inside_second = next(second)
    inside_first = next(first)
    assert frozen.trainable(unrelated) == [unrelated.weight, unrelated.bias]
    assert frozen.trainable(inside_first) == [] and frozen.trainable(inside_second) == []


def test_freezing_in_an_asyncio_task_does_not_freeze_modules_of_another_task():
    async def frozen_task(opened: asyncio.Event, built: asyncio.Event) -> nn.Module:
        with frozen.freezing():
            inside = nn.Linear(2, 2)
            opened.set()
            await built.wait()
        return inside

    async def plain_task(opened: asyncio.Event, built: asyncio.Event) -> nn.Module:
        await opened.wait()
        module = nn.Linear(2, 2)
        built.set()
        return module

    async def main():
        opened, built = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(frozen_task(opened, built), plain_task(opened, built))

    inside, plain = asyncio.run(main())
    assert frozen.trainable(inside) == []
    assert frozen.trainable(plain) == [plain.weight, plain.bias]
