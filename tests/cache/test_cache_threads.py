"""Another thread's random draws during a miss are not the part's.

torch's default generator is process-wide: a data-augmentation or prefetch thread drawing
from it while a cached part computed made the state compared around the computation move, and
the part was refused ("drew random numbers") although it never draws.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import frozen


class WaitsForADraw(nn.Module):
    """A deterministic part during whose forward another thread draws from the default generator."""

    def __init__(self, started: threading.Event, drawn: threading.Event) -> None:
        super().__init__()
        self.linear, self.started, self.drawn = nn.Linear(3, 3), started, drawn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.started.set()
        assert self.drawn.wait(timeout=30)
        return self.linear(x)


def test_a_draw_on_another_thread_during_a_miss_is_not_taken_for_the_parts() -> None:
    started, drawn = threading.Event(), threading.Event()
    model = frozen.freeze(nn.Sequential(WaitsForADraw(started, drawn), nn.Linear(3, 1)), "0")
    handle = frozen.cache(model, "0", verify=False)

    def augment() -> None:
        assert started.wait(timeout=30)
        torch.rand(5)  # the default generator, from another thread
        drawn.set()

    thread = threading.Thread(target=augment)
    thread.start()
    x = torch.randn(4, 3)
    try:
        out = model(x)
    finally:
        drawn.set()
        thread.join()
    torch.testing.assert_close(out, model[1](model[0].linear(x)))
    assert handle.stats()["0"]["entries"] == 4


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_a_part_that_draws_on_its_own_thread_is_still_refused() -> None:
    model = frozen.freeze(nn.Sequential(Noisy(), nn.Linear(3, 1)), "0")
    frozen.cache(model, "0")
    with pytest.raises(frozen.CacheError, match="drew random numbers"):
        model(torch.randn(4, 3))
