"""A budget the store cannot hold (disk space, the machine's memory) is refused when caching, not at the first forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frozen
from frozen._cache.part import Part


def test_a_disk_budget_beyond_the_free_space_is_refused_and_changes_nothing(tmp_path) -> None:
    # Accepted before, the first forward raised a raw OSError (File too large) from truncating the file.
    model = frozen.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), "0")
    own = model[0].__dict__.get("forward")
    with pytest.raises(frozen.CacheError, match=r"store='disk', budget='1000TB'.*free.*smaller budget"):
        frozen.cache(model, "0", store="disk", budget="1000TB", path=str(tmp_path))
    assert model[0].__dict__.get("forward") is own and not isinstance(own, Part)
    assert frozen.cache_stats(model) == {} and list(tmp_path.iterdir()) == []
    handle = frozen.cache(model, "0", store="disk", budget="1MB", path=str(tmp_path))
    x = torch.randn(3, 4)
    want = model[1](nn.Linear.forward(model[0], x))
    model(x)
    torch.testing.assert_close(model(x), want)
    assert handle.stats()["0"]["hits"] == 3
    frozen.uncache(model)  # the file goes with the last part
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("store", ["cpu", "device"])
def test_a_memory_budget_beyond_the_machine_is_refused_and_changes_nothing(store: str) -> None:
    # Accepted before: the store grew towards 1000 TB until the allocator failed, mid-training.
    model = frozen.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), "0")
    own = model[0].__dict__.get("forward")
    with pytest.raises(frozen.CacheError, match=rf"store='{store}', budget='1000TB'.*cpu has .* GB of memory"):
        frozen.cache(model, "0", store=store, budget="1000TB")
    assert model[0].__dict__.get("forward") is own and frozen.cache_stats(model) == {}
    handle = frozen.cache(model, "0", store=store)  # the default budget fits
    x = torch.randn(3, 4)
    model(x)
    model(x)
    assert handle.stats()["0"]["hits"] == 3
