"""Markdown tables, the target check, the chart, and the machine description."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from ._run import Row, ScenarioResult

__all__ = ["machine", "machine_slug", "scenario_markdown", "targets", "summary_markdown", "write_chart"]

SETTLED = ("Frozen+settle", "freeze")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """One line naming the hardware, core count, thread count and software versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"CPU: {_cpu_model()}, {cores} cores, torch.set_num_threads({torch.get_num_threads()})"
    if device.type == "cuda":
        text = f"GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); " + text
    return f"{text}; torch {torch.__version__}; Python {platform.python_version()}"


def machine_slug(device: torch.device) -> str:
    """A folder name for this machine, e.g. ``cpu-amd-epyc-2c`` or ``nvidia-h100-80gb-hbm3``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        name = f"cpu {_cpu_model()} {cores}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _bytes(n: int | None) -> str:
    if n is None:
        return "not measured"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}"


def _ratio(r: tuple[float, float, float] | None) -> str:
    return "—" if r is None else f"{r[0]:.3f} ({r[1]:.3f}–{r[2]:.3f})"


def _difference(value: float | None) -> str:
    if value is None:
        return "—"
    return "0 (exact)" if value == 0 else f"{value:.2e}"


def _correct(row: Row) -> str:
    if row.correct is None:
        return f"— ({row.correct_note})"
    return f"{'**yes**' if row.correct else '**NO**'}: {row.correct_note}"


def targets(result: ScenarioResult) -> list[tuple[str, float, str, bool]]:
    """``(claim, measured, bound, met)`` for each performance target this scenario has."""
    rows = {row.variant: row for row in result.rows}
    key = result.scenario.key
    found = []
    bound = 1.05 if key == "seed" else 1.03
    for name in SETTLED:
        if name in rows and rows[name].vs_ideal is not None:
            ratio = rows[name].vs_ideal[0]
            found.append((f"`{name}` step time / ideal", ratio, f"≤ {bound}", ratio <= bound))
    if key in ("bert", "resnet") and "optimizer-side" in rows:
        side = rows["optimizer-side"].timing
        for name in SETTLED:
            if name in rows:
                speedup = 1 / _paired_median(rows[name].timing.samples, side.samples)
                found.append((f"optimizer-side step time / `{name}`", speedup, "≥ 2", speedup >= 2))
    if "ideal" in rows:
        for name in SETTLED:
            if name in rows:
                same = rows[name].optimizer_bytes == rows["ideal"].optimizer_bytes
                found.append(
                    (
                        f"`{name}` optimizer state = ideal's ({_bytes(rows['ideal'].optimizer_bytes)})",
                        float(same),
                        "equal",
                        same,
                    )
                )
    return found


def _paired_median(a: list[float], b: list[float]) -> float:
    import statistics

    return statistics.median(x / y for x, y in zip(a, b))


def scenario_markdown(result: ScenarioResult, machine_line: str, command: str) -> str:
    """The results file of one scenario: description, table, targets, notes."""
    s = result.scenario
    lines = [
        f"# {s.title}",
        "",
        f"Machine: {machine_line}  ",
        f"Command: `{command}`; {result.rounds} interleaved rounds "
        f"x {result.inner} steps per variant (each sample is the median of its steps).",
        "",
        s.about,
        "",
        "| variant | median step (ms) | IQR (ms) | × ideal (IQR) | × unfrozen (IQR) | optimizer state | gradients "
        "| peak memory | frozen part (params + buffers) | output Δ vs ideal | correct |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result.rows:
        q1, q3 = row.timing.quartiles()
        lines.append(
            f"| {row.variant} | {_ms(row.timing.median)} | {_ms(q1)}–{_ms(q3)} | {_ratio(row.vs_ideal)} | "
            f"{_ratio(row.vs_unfrozen)} | {_bytes(row.optimizer_bytes)} | {_bytes(row.gradient_bytes)} | "
            f"{_bytes(row.peak_bytes)} | {_bytes(row.frozen_bytes) if row.frozen_bytes else '—'} | "
            f"{_difference(row.output_difference)} | {_correct(row)} |"
        )
    for variant, why in {**s.not_applicable, **result.skipped}.items():
        lines.append(f"| {variant} | n/a | | | | | | | | | {why} |")
    lines += [
        "",
        "Ratios are medians of per-round ratios (both variants timed in the same round); "
        "IQR is the interquartile range over rounds. Optimizer state and gradients: bytes held after "
        "the last timed step. Peak memory: see the README (fresh process per variant). Output Δ: "
        "max |output − ideal's output| / max |ideal's output| on the same batch before any step "
        "(variants that leave BatchNorm in training mode normalise with batch statistics, so they "
        "differ). Correct: the frozen part's parameters and buffers are bit-identical (`torch.equal`) "
        "after every timed step.",
        "",
    ]
    found = targets(result)
    if found:
        lines += ["## Targets", "", "| target | measured | bound | met |", "| --- | ---: | --- | --- |"]
        for claim, value, bound, met in found:
            shown = ("yes" if value else "no") if bound == "equal" else f"{value:.3f}"
            lines.append(f"| {claim} | {shown} | {bound} | {'yes' if met else '**MISSED**'} |")
        lines.append("")
    return "\n".join(lines)


def summary_markdown(results: list[ScenarioResult], machine_line: str, command: str, notes: list[str]) -> str:
    """The index page: machine, every target of every scenario, links."""
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine_line}  ",
        f"Command: `{command}`",
        "",
        "![step time relative to the hand-written ideal](chart.png)",
        "",
        "| scenario | target | measured | bound | met |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for result in results:
        link = f"[{result.scenario.key}]({result.scenario.key}.md)"
        for claim, value, bound, met in targets(result):
            shown = ("yes" if value else "no") if bound == "equal" else f"{value:.3f}"
            lines.append(f"| {link} | {claim} | {shown} | {bound} | {'yes' if met else '**MISSED**'} |")
    lines += ["", *notes, ""]
    return "\n".join(lines)


def write_chart(results: list[ScenarioResult], path: Path, machine_line: str) -> None:
    """One PNG: per scenario, each variant's step time as a multiple of the ideal."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.1 * len(results) + 0.8), squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        rows = [r for r in result.rows if r.vs_ideal is not None]
        names = [r.variant for r in rows]
        values = [r.vs_ideal[0] for r in rows]
        errors = [[r.vs_ideal[0] - r.vs_ideal[1] for r in rows], [r.vs_ideal[2] - r.vs_ideal[0] for r in rows]]
        colors = [
            "tab:blue" if n in ("Frozen", *SETTLED) else "tab:green" if n == "ideal" else "tab:gray" for n in names
        ]
        ax.barh(names, values, xerr=errors, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(result.scenario.title, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.2f}×", va="center", fontsize=7)
    axes[-1, 0].set_xlabel("median step time / hand-written ideal (lower is faster; bars: IQR)")
    fig.suptitle(machine_line, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
