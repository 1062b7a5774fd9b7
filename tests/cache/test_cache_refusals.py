"""What frozen.cache refuses, naming the part and changing nothing.

Parts that are not frozen, training behaviour, bad budgets and stores, inputs that require grad, parts
that mix samples, tied weights that train elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frozen
from frozen import CacheError, cache, uncache


def test_refusals_name_the_part_and_change_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    with pytest.raises(CacheError, match="'0' is not frozen"):
        cache(model, "0")
    with pytest.raises(frozen.UnknownPathError, match="'9'"):
        cache(model, "9")
    frozen.freeze(model, "0-1", mode="inherit")
    own = model[0].__dict__.get("forward")
    with pytest.raises(frozen.FrozenError, match="budget"):
        cache(model, "0", budget="lots")
    with pytest.raises(CacheError, match="store"):
        cache(model, "0", store="gpu")
    assert model[0].__dict__.get("forward") is own  # unchanged by the refused calls
    cache(model, "1")
    model.train()
    with pytest.raises(CacheError, match=r"'1' \(Dropout\).*training behaviour.*mode='inherit'"):
        model(torch.randn(3, 4))
    with pytest.raises(CacheError, match="cached already"):
        cache(model, "1")
    cache(model, "0")
    model.eval()  # mode="inherit" in eval: inference behaviour, cacheable
    with pytest.raises(CacheError, match="requires grad"):
        model[0](torch.randn(3, 4, requires_grad=True))
    pooled = frozen.freeze(nn.Sequential(Pool()), "0")
    cache(pooled, "0")
    with pytest.raises(CacheError, match="'0' is not batch-separable"):
        pooled(torch.randn(3, 4))
    with pytest.raises(CacheError, match="not cached"):
        uncache(model, "2")


class Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(0)  # mixes the samples: no per-sample rows


def test_tied_weight_that_trains_elsewhere_is_refused() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(frozen.Frozen(shared), nn.Sequential(shared))
    with pytest.raises(CacheError, match="not frozen|trains through"):
        cache(model, "0")
