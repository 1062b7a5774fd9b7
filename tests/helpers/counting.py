"""Counting the real runs of a module inside a cached part, without a hook.

A cached part refuses forward hooks inside it (a hit would skip them), so the tests count
runs the way frozen itself stands in front of a module: an instance ``forward``.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class RunCounter:
    """A module's instance ``forward`` that counts its calls in ``runs[0]`` (copied along with the module)."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.own, self.runs = module, module.__dict__.get("forward"), [0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.runs[0] += 1
        if self.own is not None:
            return self.own(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)


def count_runs(module: nn.Module) -> list[int]:
    """Count the runs of ``module`` in the returned one-element list."""
    counter = RunCounter(module)
    module.__dict__["forward"] = counter
    return counter.runs
