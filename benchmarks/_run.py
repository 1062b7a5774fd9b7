"""Run one scenario: build every variant, time them interleaved, collect the other columns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._harness import Timing, gradient_bytes, optimizer_state_bytes, paired_ratio, tensor_bytes, time_interleaved
from ._memory import measure_all
from ._scenarios import Scenario

__all__ = ["Settings", "Row", "ScenarioResult", "run_scenario"]


@dataclass(frozen=True)
class Settings:
    """How hard to measure. ``memory_steps=0`` skips the peak-memory subprocesses."""

    full: bool
    warmup: int
    inner_scale: float
    rounds_scale: float
    memory_steps: int
    threads: int
    device: torch.device
    parallel_memory: int = 2


@dataclass
class Row:
    """Everything measured for one variant of one scenario."""

    variant: str
    timing: Timing
    vs_ideal: tuple[float, float, float] | None
    vs_unfrozen: tuple[float, float, float] | None
    optimizer_bytes: int
    gradient_bytes: int
    peak_bytes: int | None
    correct: bool | None
    correct_note: str
    output_difference: float | None  # max |output - ideal's| / max |ideal's|, before any step
    frozen_bytes: int  # parameters and buffers of the frozen part (0: nothing frozen)


@dataclass
class ScenarioResult:
    scenario: Scenario
    rows: list[Row]
    inner: int
    rounds: int
    skipped: dict[str, str]  # variant -> why it was not run in this build/mode


def run_scenario(scenario: Scenario, settings: Settings, only: list[str] | None = None) -> ScenarioResult:
    """Measure every applicable variant of ``scenario`` in this process (time) and in
    fresh processes (peak memory, if ``settings.memory_steps``)."""
    from ._scenarios import has_freeze

    skipped: dict[str, str] = {}
    names = scenario.variants()
    if not has_freeze() and "freeze" in names:
        names.remove("freeze")
        skipped["freeze"] = "`frozen.freeze` is not in this build yet"
    if only:
        names = [n for n in names if n in only]
    workloads = {}
    for name in names:
        try:
            workloads[name] = scenario.build(name, settings.device)
        except Exception as error:  # a variant that cannot run is a finding, not a crash
            skipped[name] = f"failed to build: {type(error).__name__}: {str(error)[:200]}"
    names = list(workloads)
    outputs = {}
    for name, workload in workloads.items():
        if workload.probe is not None:
            try:
                outputs[name] = workload.probe().float()
            except Exception as error:
                skipped[name] = f"failed to run: {type(error).__name__}: {str(error)[:200]}"
    for name in [n for n in names if n in skipped]:
        del workloads[name]
    names = list(workloads)
    for workload in workloads.values():
        workload.take_snapshot()
    inner = max(1, round(scenario.inner * settings.inner_scale))
    rounds = scenario.rounds[1] if settings.full else scenario.rounds[0]
    rounds = max(2, round(rounds * settings.rounds_scale))
    timings = time_interleaved(workloads, rounds=rounds, inner=inner, warmup=settings.warmup, device=settings.device)
    peaks: dict[str, dict | None] = {}
    if settings.memory_steps:
        peaks = measure_all(
            scenario.key, names, str(settings.device), settings.threads, settings.memory_steps, settings.parallel_memory
        )
    rows = []
    for name, workload in workloads.items():
        correct, note = workload.frozen_unchanged()
        peak = peaks.get(name)
        difference = None
        if name in outputs and "ideal" in outputs:
            reference = outputs["ideal"]
            difference = ((outputs[name] - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()
        rows.append(
            Row(
                variant=name,
                timing=timings[name],
                vs_ideal=paired_ratio(timings[name], timings["ideal"]) if "ideal" in timings else None,
                vs_unfrozen=paired_ratio(timings[name], timings["unfrozen"]) if "unfrozen" in timings else None,
                optimizer_bytes=optimizer_state_bytes(workload.optimizer),
                gradient_bytes=gradient_bytes(workload.model),
                peak_bytes=None if peak is None else peak["peak_bytes"],
                correct=correct,
                output_difference=difference,
                frozen_bytes=tensor_bytes(workload.frozen_state().values()),
                correct_note=note,
            )
        )
    return ScenarioResult(scenario, rows, inner, rounds, skipped)
