"""Scenarios measured once per variant instead of stepped: a ``measure(size) -> dict`` as a scenario.

Some figures are not a training step's time: how long ``import frozen`` takes in a fresh process,
or another framework's own benchmark (``benchmarks/jax_mlp.py``). Such a family declares its
scenario with ``timed=False`` and builds each variant with :func:`measured`: the variant's figures
are the dict that ``measure`` returns, taken once after the build, and its bars are bars on those
figures (``Bar(..., reference=None, measure="seconds")`` is an absolute bound).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .declare import Setup
from .timing import Workload

__all__ = ["measured"]


def measured(measure: Callable[[str], dict[str, Any]], note: str) -> Callable[[str, Setup], Workload]:
    """A builder whose workload reports ``measure(size)`` as its figures.

    Args:
        measure: called once per variant with ``"tiny"`` (the smoke test) or ``"full"``; returns the
            figures (numbers or text), shown as columns of the scenario's table.
        note: what the correctness column says (nothing is frozen in the timed sense).
    """

    def build(variant: str, setup: Setup) -> Workload:
        def step() -> None:
            raise RuntimeError(f"variant {variant!r} is measured once (timed=False), never stepped")

        def figures() -> dict[str, float | int | str]:
            return dict(measure("tiny" if setup.tiny else "full"))

        return Workload(step, nn.Module(), None, dict, check=lambda: (None, note), figures=figures, saved=False)

    return build
