"""How a scenario is declared: :class:`Setup` (what a builder is told), :class:`Bar` (a reported target)
and :class:`Scenario` (one workload under several variants).

A scenario family (``benchmarks/scenarios/<family>.py``) defines a module-level
``SCENARIOS: tuple[Scenario, ...]``; ``registry.py`` lists every family. The suite adds an A/A
control to every scenario that has a ``reference`` variant: a second, independent build of that
variant named ``"<reference> (A/A)"``. Bars are judged against the A/A spread (see ``verdict.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # only for annotations: timing.py and run.py import nothing from here at run time
    from .run import ScenarioResult
    from .timing import Workload

__all__ = ["Setup", "Bar", "Scenario", "AA"]

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
        timed: ``False`` for a scenario measured once per variant (its figures: an import time, another
            framework's own timing); then no step is timed, and its bars are on figures.
        requires: modules it needs beyond the suite's own (e.g. ``("jax",)``). When one cannot be
            found, a run of every scenario leaves it out and says so; asking for it by key is an error.
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
    timed: bool = True
    requires: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
