"""A cached lean convolution: the cache stores and replays the convolution's own output.

Lean folds a frozen BatchNorm into the convolution before it, and the norm then passes the
convolution's (already normalised) output through -- only the very tensor the convolution
just returned. A cache put in front of that convolution stored the normalised rows and
replayed them, and the norm normalised them a second time. Now the lean convolution folds
only while nothing stands in front of it, and lean takes its place behind a cache whatever
the order of the calls.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import frozen


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        block[1].running_mean.uniform_(-1, 1)
        block[1].running_var.uniform_(0.5, 2.0)
    return nn.Sequential(block, nn.Flatten(), nn.Linear(4 * 36, 2))


@pytest.mark.parametrize("order", [("lean", "cache"), ("cache", "lean")], ids=["lean, cache", "cache, lean"])
def test_a_cached_lean_convolution_replays_its_own_output_and_trains_like_the_plain_model(order) -> None:
    model = frozen.freeze(_model(), "0")
    reference = copy.deepcopy(model)  # frozen, neither cached nor lean
    for step in order:
        frozen.lean(model, "0") if step == "lean" else frozen.cache(model, "0.0")
    x, y = torch.randn(6, 3, 6, 6), torch.randn(6, 2)
    batches = [x[:4], x, x[2:], x[[5, 0, 3]]]  # misses, partial hits, hits in another order
    optimizers = [torch.optim.SGD(frozen.trainable(m), lr=0.1, momentum=0.9) for m in (model, reference)]
    frozen_before = copy.deepcopy(model[0].state_dict())
    for batch in batches:
        losses = []
        for net, optimizer in zip((model, reference), optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            out = net(batch)
            loss = (out - y[: len(batch)]).square().mean()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    stats = frozen.cache_stats(model)["0.0"]
    assert stats["hits"] == 11 and stats["misses"] == 6
    torch.testing.assert_close(model[2].weight, reference[2].weight, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, frozen_before[k]) for k, v in model[0].state_dict().items())
    assert all(p.grad is None for p in model[0].parameters())
    frozen.uncache(model)
    frozen.unlean(model)
    frozen.thaw(model)
    assert not any(k in m.__dict__ for m in model.modules() for k in ("forward", "train", "_frozen"))
