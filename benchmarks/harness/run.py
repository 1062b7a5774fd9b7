"""Run one scenario: build every variant and the A/A control, time them, collect the other figures."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .declare import AA, Scenario, Setup
from .timing import (
    Timing,
    Workload,
    gradient_bytes,
    optimizer_state_bytes,
    paired_ratio,
    saved_activation_bytes,
    tensor_bytes,
    time_interleaved,
)
from .verdict import Verdict, aa_spread, judge

__all__ = ["Settings", "Row", "ScenarioResult", "run_scenario"]


@dataclass(frozen=True)
class Settings:
    """How hard to measure. ``memory_steps=0`` skips the peak-RSS subprocesses.

    ``size`` is passed to the builders (``"tiny"`` in the smoke test).
    """

    full: bool
    warmup: int
    inner_scale: float
    rounds_scale: float
    memory_steps: int
    threads: int
    device: torch.device
    parallel_memory: int = 2
    size: str = ""
    clock: str = "wall"  # "cpu": process CPU time (see timing.time_interleaved)

    def setup(self) -> Setup:
        return Setup(self.device, self.size or ("full" if self.full else "quick"))


@dataclass
class Row:
    """Everything measured for one variant of one scenario."""

    variant: str
    timing: Timing
    vs_ideal: tuple[float, float, float] | None
    vs_unfrozen: tuple[float, float, float] | None
    optimizer_bytes: int
    gradient_bytes: int
    saved_bytes: int | None  # saved-activation bytes of one step (deterministic)
    peak_bytes: int | None  # peak RSS delta in a fresh process (secondary, noisy)
    correct: bool | None
    correct_note: str
    output_difference: float | None  # max |output - reference's| / max |reference's|, before any step
    frozen_bytes: int  # parameters and buffers that must not change (0: nothing frozen)
    figures: dict


@dataclass
class ScenarioResult:
    scenario: Scenario
    rows: list[Row]
    inner: int
    rounds: int
    skipped: dict[str, str]  # variant -> why it was not run
    spread: float | None  # the A/A spread (see _verdict)
    verdicts: list[Verdict]


def _build_all(scenario: Scenario, names: list[str], setup: Setup, skipped: dict[str, str]) -> dict[str, Workload]:
    workloads = {}
    for name in names:
        try:
            workloads[name] = scenario.build(name.removesuffix(AA), setup)
        except Exception as error:  # a variant that cannot run is a result (an n/a row saying why), not a crash
            skipped[name] = f"failed to build: {type(error).__name__}: {str(error)[:300]}"
    return workloads


def _probe_all(workloads: dict[str, Workload], skipped: dict[str, str]) -> dict[str, torch.Tensor]:
    outputs = {}
    for name, workload in list(workloads.items()):
        if workload.probe is None:
            continue
        try:
            outputs[name] = workload.probe().float()
        except Exception as error:
            skipped[name] = f"failed to run: {type(error).__name__}: {str(error)[:300]}"
            del workloads[name]
    return outputs


def _variant_names(scenario: Scenario, only: list[str] | None) -> list[str]:
    names = [v for v in scenario.variants if v not in scenario.not_applicable]
    if scenario.reference in names:  # the A/A control sits next to the reference
        names.insert(names.index(scenario.reference) + 1, scenario.reference + AA)
    if only:
        names = [n for n in names if n in only or n.removesuffix(AA) in only]
    return names


def _ratio(timings: dict[str, Timing], name: str, reference: str | None) -> tuple[float, float, float] | None:
    if reference not in timings or not timings[name].samples:
        return None
    return paired_ratio(timings[name], timings[reference])


def _row(
    name: str,
    workload: Workload,
    timings: dict[str, Timing],
    reference: str | None,
    outputs: dict[str, torch.Tensor],
    peak: dict | None,
) -> Row:
    """Everything but the timing for one variant: one saved-bytes step, figures, correctness."""
    saved = saved_activation_bytes(workload)
    figures = dict(workload.figures()) if workload.figures is not None else {}
    correct, note = workload.frozen_unchanged()
    difference = None
    if name in outputs and reference in outputs:
        want = outputs[reference]
        difference = ((outputs[name] - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    return Row(
        variant=name,
        timing=timings[name],
        vs_ideal=_ratio(timings, name, reference),
        vs_unfrozen=_ratio(timings, name, "unfrozen"),
        optimizer_bytes=optimizer_state_bytes(workload.optimizer),
        gradient_bytes=gradient_bytes(workload.model),
        saved_bytes=saved,
        peak_bytes=None if peak is None else peak["peak_bytes"],
        correct=correct,
        correct_note=note,
        output_difference=difference,
        frozen_bytes=tensor_bytes(workload.frozen_state().values()),
        figures=figures,
    )


def run_scenario(scenario: Scenario, settings: Settings, only: list[str] | None = None) -> ScenarioResult:
    """Measure every applicable variant of ``scenario`` (and its A/A control) in this process,
    and peak RSS in fresh processes if ``settings.memory_steps`` and ``scenario.rss``."""
    skipped: dict[str, str] = {}
    workloads = _build_all(scenario, _variant_names(scenario, only), settings.setup(), skipped)
    outputs = _probe_all(workloads, skipped)
    for workload in workloads.values():
        workload.take_snapshot()
    inner = max(1, round(scenario.inner * settings.inner_scale))
    rounds = max(2, round((scenario.rounds[1] if settings.full else scenario.rounds[0]) * settings.rounds_scale))
    if scenario.timed:
        timings = time_interleaved(
            workloads, rounds=rounds, inner=inner, warmup=settings.warmup, device=settings.device, clock=settings.clock
        )
    else:  # measured once per variant: its figures are the result
        inner, rounds = 0, 0
        timings = {name: Timing([]) for name in workloads}
    peaks: dict[str, dict | None] = {}
    if settings.memory_steps and scenario.rss:
        # Imported here: `python -m benchmarks.harness.memory` (the worker) must not be imported by its package first.
        from .memory import measure_all

        peaks = measure_all(
            scenario.key,
            [n for n in workloads if not n.endswith(AA)],
            str(settings.device),
            settings.threads,
            settings.memory_steps,
            settings.parallel_memory,
        )
    reference = scenario.reference
    rows = [_row(name, w, timings, reference, outputs, peaks.get(name)) for name, w in workloads.items()]
    times = {row.variant: row.timing.samples for row in rows}
    deterministic = {
        row.variant: {**row.figures, "saved": row.saved_bytes, "optimizer_bytes": row.optimizer_bytes} for row in rows
    }
    spread = aa_spread(times, reference)
    verdicts = [judge(bar, times, deterministic, spread) for bar in scenario.bars]
    return ScenarioResult(scenario, rows, inner, rounds, skipped, spread, verdicts)
