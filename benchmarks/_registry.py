"""How a scenario is declared, and the list of every registered scenario.

A scenario module (``benchmarks/_scenarios.py`` and its siblings, or an extension
module such as ``benchmarks/_selectors.py`` / ``benchmarks/_beyond.py``) defines a
module-level ``SCENARIOS: tuple[Scenario, ...]``. :func:`scenarios` collects them in
a fixed order: the built-in modules, then each extension module whose file exists.
An extension that fails to import is reported (not silently dropped) and skipped.

The suite adds an A/A control to every scenario that has a ``reference`` variant: a
second, independent build of that variant named ``"<reference> (A/A)"``. Bars are
judged against the A/A spread (see ``_verdict.py``).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # only for annotations: _harness imports nothing from here
    from ._harness import Workload
    from ._run import ScenarioResult

__all__ = ["Setup", "Bar", "Scenario", "scenarios", "load_errors", "BUILTIN_MODULES", "EXTENSION_MODULES", "AA"]

BUILTIN_MODULES = ("benchmarks._scenarios", "benchmarks._users", "benchmarks._checkpointing")
EXTENSION_MODULES = (
    "benchmarks._selectors",
    "benchmarks._beyond",
    "benchmarks._perceptual",
    "benchmarks._rows",
    "benchmarks.cache_host",
    "benchmarks.gpu_scenarios",
)
AA = " (A/A)"  # suffix of the A/A control's variant name


@dataclass(frozen=True)
class Setup:
    """What a builder is told: where to run and how big to make things.

    Attributes:
        device: the torch device.
        size: ``"tiny"`` (the smoke test: smallest model/batch that still exercises
            every code path, seconds per scenario), ``"quick"`` or ``"full"``.
    """

    device: torch.device
    size: str = "full"

    @property
    def tiny(self) -> bool:
        return self.size == "tiny"


@dataclass(frozen=True)
class Bar:
    """One reported target: ``value(variant) / value(reference) <op> bound``.

    Attributes:
        claim: the text shown in the tables.
        variant: the numerator variant.
        reference: the denominator variant, or ``None`` for an absolute bar on ``variant``'s value.
        bound: the threshold.
        op: ``"<="`` or ``">="``.
        measure: ``"time"`` (paired per-round step-time ratio; verdict uses the A/A spread),
            ``"saved"`` (saved-activation bytes, deterministic: met/missed exactly), or the
            name of a figure returned by ``Workload.figures`` (deterministic).
    """

    claim: str
    variant: str
    reference: str | None = "ideal"
    bound: float = 1.03
    op: str = "<="
    measure: str = "time"


@dataclass(frozen=True)
class Scenario:
    """One workload measured under several variants.

    Attributes:
        key: file name of its results table and the ``--scenario`` value.
        title, about: heading and a paragraph (model, input, step, frozen part).
        build: ``build(variant, setup) -> Workload``; called once per variant (and once more
            for the A/A control of ``reference``), each time building from the same seed.
        variants: the variants, in table order.
        not_applicable: variant to the reason it does not apply (shown as an n/a row).
        bars: the targets reported for this scenario.
        reference: the variant every ``× ideal`` column divides by and the A/A control copies
            (``None``: no ratio column, no A/A control).
        inner: steps per timing sample; rounds: timing rounds in (quick, full) mode.
        rss: measure peak RSS in a fresh process per variant (full mode; secondary figure).
        quick: whether ``--quick`` runs it (when ``False`` the output says it was left out and why).
        quick_note: why it is left out of ``--quick``.
        notes: ``notes(result) -> list[str]``, extra markdown paragraphs for its results file.
        devices: the device types it runs on outside tiny mode (sizes made for a GPU take
            minutes per step on a CPU); ``--scenario KEY`` runs it anyway.
    """

    key: str
    title: str
    about: str
    build: Callable[[str, Setup], Workload]
    variants: tuple[str, ...]
    not_applicable: dict[str, str] = field(default_factory=dict)
    bars: tuple[Bar, ...] = ()
    reference: str | None = "ideal"
    inner: int = 1
    rounds: tuple[int, int] = (6, 30)
    rss: bool = True
    quick: bool = True
    quick_note: str = ""
    notes: Callable[[ScenarioResult], list[str]] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")


_errors: dict[str, str] = {}


def load_errors() -> dict[str, str]:
    """Extension modules that exist but failed to import: module name to the error."""
    return dict(_errors)


def scenarios() -> list[Scenario]:
    """Every registered scenario: built-in modules first, then extensions whose file exists."""
    root = Path(__file__).resolve().parent
    found: list[Scenario] = []
    for name in BUILTIN_MODULES + EXTENSION_MODULES:
        if name in EXTENSION_MODULES and not (root / (name.rsplit(".", 1)[1] + ".py")).exists():
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # one engineer's broken file must not hide everyone else's results
            if name not in EXTENSION_MODULES:
                raise
            _errors[name] = traceback.format_exc(limit=3)
            print(f"benchmarks: {name} failed to import; its scenarios are skipped:\n{_errors[name]}", file=sys.stderr)
            continue
        found.extend(getattr(module, "SCENARIOS", ()))
    keys = [s.key for s in found]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"benchmark scenario keys registered twice: {duplicated}; give each scenario its own key")
    return found
