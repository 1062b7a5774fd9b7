"""Selector scaling: one ``frozen.select`` call at 1k / 5k / 20k modules.

The model is deep and wide: ``blocks`` is a ``ModuleList`` of chains, each 30 levels of
``Sequential(Linear(1, 1), LayerNorm(1), next level)``, plus a ``head`` -- about 1.3
parameter uses per module, paths up to 32 segments deep. Each variant is one selector
kind; its step is one ``frozen.select`` call (what ``freeze`` / ``thaw`` resolve
before changing anything). The reference ``walk`` is the floor every selector pays:
listing the module uses and parameter uses once (``frozen._core.tree``).

Linear time shows as a constant ``× walk`` ratio and a constant ``µs per use`` figure
across the three sizes (quadratic type and predicate selectors once took 29 s and 63 s at
20k modules, and each ``**`` multiplied pattern time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import nn

import frozen
from frozen._core.tree import iter_module_uses, iter_param_uses

from ..harness import Bar, Scenario, Setup, Workload

__all__ = ["SCENARIOS", "synthetic"]

DEPTH = 30

# variant -> (targets, exclude) for frozen.select
SELECTORS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "type": ((nn.Linear,), ()),
    "leaves predicate": ((lambda path, module: not module._modules,), ()),
    "blocks.*.2.*": (("blocks.*.2.*",), ()),
    "range 0-5": (("blocks.0-5",), ()),
    "last three": (("blocks.-3:",), ()),
    "**.**.**.**.0": (("**.**.**.**.0",), ()),
    "**.bias": (("**.bias",), ()),
    "exclude": (("",), ("blocks.-1", "**.weight", nn.LayerNorm)),
}
VARIANTS = ("walk", *SELECTORS)


def synthetic(modules: int, depth: int = DEPTH) -> nn.Module:
    """About ``modules`` modules: ``blocks.<i>`` chains of ``depth`` levels, and a ``head``."""

    def chain(level: int) -> nn.Module:
        rest = [chain(level + 1)] if level < depth else []
        return nn.Sequential(nn.Linear(1, 1), nn.LayerNorm(1), *rest)

    model = nn.Module()
    model.blocks = nn.ModuleList(chain(1) for _ in range(max(2, modules // (3 * depth))))
    model.head = nn.Linear(1, 1)
    return model


def _walk(model: nn.Module) -> None:
    list(iter_module_uses(model))
    list(iter_param_uses(model))


def _builder(modules: int) -> Callable[[str, Setup], Workload]:
    def build(variant: str, setup: Setup) -> Workload:
        model = synthetic(150 if setup.tiny else modules, depth=5 if setup.tiny else DEPTH)
        uses = len(list(iter_module_uses(model))) + len(list(iter_param_uses(model)))
        if variant == "walk":
            step: Callable[[], Any] = lambda: _walk(model)  # noqa: E731
        else:
            targets, exclude = SELECTORS[variant]
            step = lambda: frozen.select(model, *targets, exclude=exclude)  # noqa: E731

        def figures() -> dict[str, float | int | str]:
            best = min(_seconds(step) for _ in range(3))
            selected = "" if variant == "walk" else len(step())
            return {
                "module+parameter uses": uses,
                "selected paths": selected,
                "µs per use": round(1e6 * best / uses, 2),
            }

        def run() -> None:
            step()

        return Workload(run, model, None, dict, figures=figures, saved=False)

    return build


def _seconds(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _scenario(label: str, modules: int, rounds: tuple[int, int], quick: bool) -> Scenario:
    return Scenario(
        key=f"selectors-{label}",
        title=f"Selector scaling: frozen.select on a {label}-module model",
        about=(
            f"A deep-and-wide synthetic model of about {modules} modules ({DEPTH}-level chains of "
            "Sequential(Linear, LayerNorm, next)) and ~1.3 parameter uses per module. Each variant is one "
            "frozen.select call with one selector kind; `walk` lists the module and parameter uses once, "
            "the floor of any selection. Linear selection keeps `× walk` and `µs per use` constant "
            "across selectors-1k / 5k / 20k."
        ),
        build=_builder(modules),
        variants=VARIANTS,
        bars=(
            Bar("type selector / walk", "type", "walk", 2.0, "<="),
            Bar("leaves predicate / walk", "leaves predicate", "walk", 2.0, "<="),
            Bar("four `**` pattern / walk", "**.**.**.**.0", "walk", 3.0, "<="),
            Bar("pattern + exclusions / walk", "exclude", "walk", 4.0, "<="),
        ),
        reference="walk",
        inner=1,
        rounds=rounds,
        rss=False,
        quick=quick,
        quick_note="" if quick else "20k modules: about a minute for all variants; run without --quick",
    )


SCENARIOS: tuple[Scenario, ...] = (
    _scenario("1k", 1_000, (6, 20), True),
    _scenario("5k", 5_000, (6, 15), True),
    _scenario("20k", 20_000, (6, 10), False),
)
