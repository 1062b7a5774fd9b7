"""The cache's own work per call is a constant number of tensor operations, whatever the batch size.

Counted as aten operations under a ``TorchDispatchMode`` (each a kernel launch on a GPU): the
step with the cache minus the same step without it (plus, on a hit, the part's forward that the
cache skipped). Before, a fill copied every row of every output into the store separately (12 /
132 operations at batch 8 / 128 for one part, 21 / 261 for a chain of two) and a hit stacked
stored rows one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from dispatch_counting import count_ops
from torch import nn

import frozen

HIT, FILL = 6, 16  # the most operations a part may add to a call: a hit, a fill


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return frozen.freeze(
        nn.Sequential(
            nn.Sequential(nn.Linear(16, 32), nn.ReLU()), nn.Sequential(nn.Linear(32, 32), nn.Tanh()), nn.Linear(32, 2)
        ),
        "0",
        "1",
    )


def _own_ops(batch: int, parts: tuple[str, ...], ids: bool) -> tuple[int, int]:
    """``(fill, hit)`` operations the cache adds to one call at ``batch``, after a first call (allocation, checks)."""
    plain, model = _model(), _model()
    handle = frozen.cache(model, *parts)
    data = torch.randn(3 * batch, 16)

    def call(net: nn.Module, rows: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            if ids and net is model:
                with handle.samples(rows):
                    return net(data[rows])
            return net(data[rows])

        return run

    first, second = torch.arange(batch), torch.arange(batch, 2 * batch)
    call(model, first)()  # the first fill: the store's buffers are made, the rows checked
    call(plain, first)()
    fill = sum(count_ops(call(model, second)).values()) - sum(count_ops(call(plain, second)).values())
    cached = [model.get_submodule(p) for p in parts]
    with torch.no_grad():  # what a hit skips: the parts' own forwards
        inside = data[first]
        part_ops = 0
        for m in cached:
            part_ops += sum(count_ops(lambda m=m, x=inside: nn.Sequential.forward(m, x)).values())
            inside = nn.Sequential.forward(m, inside)
    hit = sum(count_ops(call(model, first)).values()) - sum(count_ops(call(plain, first)).values()) + part_ops
    assert handle.stats()[parts[0]]["hits"] == batch
    return fill, hit


@pytest.mark.parametrize("ids", [False, True], ids=["content keys", "sample ids"])
@pytest.mark.parametrize("parts", [("0",), ("0", "1")], ids=["one part", "a chain of two"])
def test_a_hit_and_a_fill_cost_the_same_few_operations_at_batch_8_and_128(parts: tuple[str, ...], ids: bool) -> None:
    small, large = _own_ops(8, parts, ids), _own_ops(128, parts, ids)
    assert small == large, f"(fill, hit) operations at batch 8: {small}, at batch 128: {large}"
    fill, hit = small
    assert fill <= FILL * len(parts) and hit <= HIT * len(parts), (fill, hit)
