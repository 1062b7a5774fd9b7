"""``shared=`` by position when ``forward``'s first parameter is not named ``self``.

The instance was dropped from ``forward``'s parameters by its name, so ``def forward(s, x, w)``
shifted every position by one: ``shared=("w",)`` passed by position was split by sample, and a
batch mixing seen and new samples ran the part with a slice of ``w``.
"""

from __future__ import annotations

import torch
from torch import nn

import frozen


class Weighted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(s, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # noqa: N805 -- the instance named otherwise
        return s.linear(x) @ w  # w: (4, 4), shared by every sample of a batch of 4


def test_a_shared_argument_passed_by_position_is_never_split_whatever_the_instance_is_called() -> None:
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(Weighted()), "0")
    frozen.cache(model, "0", shared=("w",))
    data, w = torch.randn(8, 3), torch.randn(4, 4)
    model[0](data[:4], w)
    mixed = data[torch.tensor([0, 5, 1, 6])]  # two seen, two new: the new ones run with the whole of w
    want = Weighted.forward(model[0], mixed, w)
    torch.testing.assert_close(model[0](mixed, w), want)
    stats = frozen.cache_stats(model)["0"]
    assert (stats["hits"], stats["misses"]) == (2, 6)
