"""``frozen.cache`` walks the model once, however many parts it caches.

Set-up walked the model's uses and trainable parameters again for every path (363 ms for 40
paths of a 48-block GPT-2, 23 ms for one), and so did every part at its first call.
"""

from __future__ import annotations

import torch
from torch import nn

import frozen
import frozen._cache.api as cache_api
import frozen._cache.part as cache_part


def test_caching_forty_blocks_walks_the_model_once(monkeypatch) -> None:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(48)]
    model = frozen.freeze(nn.Sequential(*blocks, nn.Linear(8, 1)), *(str(i) for i in range(48)))
    walks = {"views": 0, "trainable": 0}

    def counted(name: str, function):  # type: ignore[no-untyped-def]
        def walk(*args, **kwargs):  # type: ignore[no-untyped-def]
            walks[name] += 1
            return function(*args, **kwargs)

        return walk

    # One View is one walk of the model (its uses, and the trainable set derived from them).
    monkeypatch.setattr(cache_api, "View", counted("views", cache_api.View))
    handle = frozen.cache(model, *(str(i) for i in range(40)))
    assert walks == {"views": 1, "trainable": 0}
    monkeypatch.setattr(cache_part, "trainable_ids", counted("trainable", cache_part.trainable_ids))
    x = torch.randn(4, 8)
    model(x)  # every part checks whether it trains through another use: one walk for all forty
    assert walks["trainable"] == 1
    assert handle.stats()["39"]["misses"] == 4
    model(x)
    assert handle.stats()["39"]["hits"] == 4
