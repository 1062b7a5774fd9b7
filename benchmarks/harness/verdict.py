"""Verdicts: whether a bar is *met*, *missed* or *inconclusive* given the A/A spread.

The rule (also in benchmarks/README.md):

1. For a step-time bar, take the per-round ratios ``variant / reference`` (both timed in
   the same round) and their median's 95 % distribution-free interval: the order
   statistics ``x(k) .. x(n-k+1)`` with the largest ``k`` such that a Binomial(n, 1/2)
   falls below ``k`` with probability at most 2.5 %. With fewer than 6 rounds no
   interval reaches 95 % coverage, and every time bar is *inconclusive*.
2. The A/A spread ``s`` is how far the same interval of the A/A control (a second,
   independent build of the reference, timed like every other variant) reaches from
   1.0: ``s = max(|lo - 1|, |hi - 1|)``. It is what this run cannot tell apart from
   "no difference" even between two identical variants.
3. Widen the ratio interval by ``s`` on each side (multiplicatively: ``lo/(1+s)``,
   ``hi·(1+s)``). For ``ratio <= bound``: *met* if the widened interval is entirely
   at or below the bound, *missed* if it is entirely above, *inconclusive* otherwise
   (``>=`` mirrors this).
4. Deterministic measures (saved-activation bytes, counts) need no interval: met or
   missed exactly. A value that could not be measured is *inconclusive*, with the reason.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .declare import AA, Bar

__all__ = ["Verdict", "median_interval", "aa_spread", "judge", "VERDICTS"]

VERDICTS = ("met", "missed", "inconclusive")
MIN_ROUNDS = 6  # the fewest rounds whose [min, max] covers the median with >= 95 % (1 - 2/2**6)


@dataclass(frozen=True)
class Verdict:
    """One bar's outcome: the measured value, the interval judged (widened), and the verdict."""

    bar: Bar
    value: float | None
    low: float | None
    high: float | None
    verdict: str
    note: str = ""


def _binomial_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The distribution-free interval of the median: order statistics ``x(k), x(n-k+1)``.

    >>> median_interval([1.0, 2.0, 3.0])
    (1.0, 3.0)
    """
    ordered = sorted(values)
    n = len(ordered)
    alpha = (1 - confidence) / 2
    k = 1
    while k + 1 <= (n + 1) // 2 and _binomial_cdf(k, n) <= alpha:
        k += 1
    return ordered[k - 1], ordered[n - k]


def per_round_ratios(a: list[float], b: list[float]) -> list[float]:
    """``a[i] / b[i]`` for each round (both variants timed in the same round)."""
    return [x / y for x, y in zip(a, b)]


def aa_spread(times: dict[str, list[float]], reference: str | None) -> float | None:
    """How far the A/A control's median interval reaches from 1.0 (``None``: no A/A row)."""
    if reference is None or reference + AA not in times or reference not in times:
        return None
    low, high = median_interval(per_round_ratios(times[reference + AA], times[reference]))
    return max(abs(low - 1), abs(high - 1))


def _decide(low: float, high: float, bar: Bar) -> str:
    if bar.op == "<=":
        return "met" if high <= bar.bound else "missed" if low > bar.bound else "inconclusive"
    return "met" if low >= bar.bound else "missed" if high < bar.bound else "inconclusive"


def _value(figures: dict[str, dict], variant: str | None, measure: str) -> float | None:
    if variant is None:
        return 1.0
    value = figures.get(variant, {}).get(measure)
    return float(value) if isinstance(value, (int, float)) else None


def judge(bar: Bar, times: dict[str, list[float]], figures: dict[str, dict], spread: float | None) -> Verdict:
    """Judge one bar.

    Args:
        bar: the bar.
        times: variant to its per-round samples (seconds).
        figures: variant to its deterministic figures (``"saved"`` and the workload's own).
        spread: the scenario's A/A spread, or ``None`` when it has no A/A control.
    """
    missing = [v for v in (bar.variant, bar.reference) if v is not None and v not in times and v not in figures]
    if missing:
        return Verdict(bar, None, None, None, "inconclusive", f"not measured: {', '.join(missing)}")
    if bar.measure == "time":
        if bar.reference is None:
            return Verdict(bar, None, None, None, "inconclusive", "a time bar needs a reference variant")
        ratios = per_round_ratios(times[bar.variant], times[bar.reference])
        low, high = median_interval(ratios)
        s = spread or 0.0
        low, high = low / (1 + s), high * (1 + s)
        note = f"A/A spread ±{s:.3f}" if spread is not None else "no A/A control: interval not widened"
        if len(ratios) < MIN_ROUNDS:
            return Verdict(bar, statistics.median(ratios), low, high, "inconclusive", f"{len(ratios)} rounds < 6")
        return Verdict(bar, statistics.median(ratios), low, high, _decide(low, high, bar), note)
    top, bottom = _value(figures, bar.variant, bar.measure), _value(figures, bar.reference, bar.measure)
    if top is None or bottom is None or bottom == 0:
        return Verdict(bar, None, None, None, "inconclusive", f"{bar.measure} not available")
    value = top / bottom
    note = "deterministic" if bar.reference is not None else "the measured value against the bound"
    return Verdict(bar, value, value, value, _decide(value, value, bar), note)
