"""A cached part thawed and frozen again: still found, reported and removable; thawed, it trains uncached.

The cache and frozen's white-box guard both stand in for the part's ``forward``. Freezing
again after a thaw used to put the new guard in front of the cache, where nothing looked
for it: ``cache_stats`` listed nothing, ``uncache`` did nothing or said "not cached", and
the part went on answering from its store. And ``uncache`` after a thaw put the thawed
part's old guard back as its ``forward``.
"""

from __future__ import annotations

import pytest
import torch
from cached_models import CHECK
from counting import count_runs
from torch import nn

import frozen


def _model() -> tuple[nn.Sequential, list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Linear(8, 2))
    runs = count_runs(model[0][0])  # real runs of the part's first layer
    return model, runs


def _plain(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The model's output computed from its weights by hand, with no stand-in on the way."""
    encoder, head = model[0][0], model[1]
    return nn.functional.linear(
        torch.tanh(nn.functional.linear(x, encoder.weight, encoder.bias)), head.weight, head.bias
    )


@pytest.mark.parametrize("uncache_all", [False, True], ids=["uncache(model, path)", "uncache(model)"])
def test_a_part_frozen_again_after_a_thaw_is_still_cached_reported_and_removable(uncache_all: bool) -> None:
    model, runs = _model()
    x = torch.randn(5, 4)
    frozen.freeze(model, "0")
    frozen.cache(model, "0")
    frozen.thaw(model, "0")
    frozen.freeze(model, "0")
    model(x)
    model(x)
    assert runs[0] == 1 + CHECK  # cached again once frozen again: the second call is a hit
    stats = frozen.cache_stats(model)
    assert list(stats) == ["0"] and stats["0"]["hits"] == 5 and stats["0"]["misses"] == 5
    if uncache_all:
        frozen.uncache(model)
    else:
        frozen.uncache(model, "0")
    assert frozen.cache_stats(model) == {}
    with pytest.raises(frozen.CacheError, match=r"frozen.uncache\(model, '0'\): that part is not cached"):
        frozen.uncache(model, "0")
    torch.testing.assert_close(model(x), _plain(model, x))
    assert runs[0] == 2 + CHECK  # no longer answered from the store
    assert frozen.is_frozen(model, "0")
    frozen.thaw(model, "0")
    assert "_frozen" not in model[0].__dict__ and "forward" not in model[0].__dict__


def test_a_thawed_cached_part_trains_uncached_and_caches_again_once_frozen() -> None:
    model, runs = _model()
    frozen.freeze(model, "0")
    handle = frozen.cache(model, "0")
    x, y = torch.randn(6, 4), torch.randn(6, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    frozen_weight = model[0][0].weight.clone()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = (model(x) - y).square().mean()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    assert torch.equal(model[0][0].weight, frozen_weight) and model[0][0].weight.grad is None
    assert runs[0] == 1 + CHECK and handle.stats()["0"]["hits"] == 6

    frozen.thaw(model, "0")
    for _ in range(2):
        before = model[0][0].weight.clone()
        step()
        assert model[0][0].weight.grad is not None and not torch.equal(model[0][0].weight, before)
    assert runs[0] == 3 + CHECK  # every thawed call ran the part: nothing was served from the store
    assert handle.stats()["0"]["bypassed"] == 2 and list(frozen.cache_stats(model)) == ["0"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), _plain(model, x))  # today's weights, not the stored rows

    frozen.freeze(model, "0")
    optimizer.zero_grad(set_to_none=True)
    frozen_weight = model[0][0].weight.clone()
    runs_before = runs[0]
    for _ in range(2):
        step()
    assert runs[0] == runs_before + 1  # frozen again: computed once, then a hit
    assert torch.equal(model[0][0].weight, frozen_weight) and model[0][0].weight.grad is None


@pytest.mark.parametrize(
    "order",
    [("thaw", "uncache"), ("uncache", "thaw")],
    ids=["thaw then uncache", "uncache then thaw"],
)
def test_freeze_cache_then_thaw_and_uncache_leave_the_module_as_before(order: tuple[str, str]) -> None:
    model, _ = _model()
    root = model[0]
    before = dict(root.__dict__)
    x = torch.randn(3, 4)
    frozen.freeze(model, "0")
    frozen.cache(model, "0")
    model(x)
    for step in order:
        frozen.thaw(model, "0") if step == "thaw" else frozen.uncache(model, "0")
    assert root.__dict__.keys() == before.keys()
    assert all(root.__dict__[k] is v or root.__dict__[k] == v for k, v in before.items() if not isinstance(v, dict))
    torch.testing.assert_close(model(x), _plain(model, x))
    model(x).sum().backward()
    assert root[0].weight.grad is not None  # thawed: it trains
