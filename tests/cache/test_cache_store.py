"""Where a cached part keeps its outputs.

cpu / device / disk stores within a budget, least recently used evicted first; uncache gives everything
back; copies carry no store and run uncached.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from cached_models import TOL, cached_linear
from torch import nn

import frozen
from frozen import cache, cache_stats, uncache


@pytest.mark.parametrize("store", ["cpu", "device", "disk"])
def test_stores_stay_within_budget_and_evict_least_recently_used(store: str, tmp_path) -> None:
    model = frozen.freeze(nn.Sequential(nn.Linear(4, 16, dtype=torch.float64)), "0")
    own = model[0].__dict__.get("forward")  # frozen's white-box guard stands in for the root's forward
    handle = cache(model, "0", budget=5 * 128, store=store, path=str(tmp_path) if store == "disk" else None)
    x = torch.randn(8, 4, dtype=torch.float64)
    for _ in range(3):
        torch.testing.assert_close(model(x), nn.Linear.forward(model[0], x), **TOL)
    stats = handle.stats()["0"]
    assert stats["entries"] == 5 and stats["bytes"] <= 5 * 128 and stats["evictions"] > 0
    assert model(x[3:]).shape == (5, 16) and handle.stats()["0"]["hits"] == stats["hits"] + 5
    uncache(model)
    assert model[0].__dict__.get("forward") is own and cache_stats(model) == {}


def test_copies_run_uncached_with_the_same_outputs() -> None:
    model, calls, x = cached_linear()
    picklable = frozen.freeze(nn.Sequential(nn.Linear(4, 2)), "0")
    cache(picklable, "0")
    picklable(x)
    torch.testing.assert_close(pickle.loads(pickle.dumps(picklable))(x), picklable(x))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(picklable))):
        assert cache_stats(clone) == {} and clone(x).shape[0] == 5
