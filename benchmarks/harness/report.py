"""Markdown tables, the target check, the chart, and the machine description."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from .declare import AA
from .run import Row, ScenarioResult
from .verdict import Verdict

__all__ = ["machine", "machine_slug", "scenario_markdown", "verdict_lines", "summary_markdown", "write_chart"]

FROZEN_PATHS = ("Frozen", "Frozen+settle", "freeze", "Frozen+settle bf16", "freeze bf16")


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
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return str(size)


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


def _shown(verdict: Verdict) -> tuple[str, str]:
    """(value, widened interval) as text; byte and count ratios get 3 decimals too."""
    if verdict.value is None:
        return "—", "—"
    interval = "exact" if verdict.low == verdict.high else f"{verdict.low:.3f}–{verdict.high:.3f}"
    return f"{verdict.value:.3f}", interval


def verdict_lines(result: ScenarioResult) -> list[str]:
    """One line per bar for the console: ``claim = value (bound) verdict``."""
    lines = []
    for v in result.verdicts:
        value, interval = _shown(v)
        mark = {"met": "met", "missed": "MISSED", "inconclusive": "inconclusive"}[v.verdict]
        lines.append(f"  bar: {v.bar.claim} = {value} [{interval}] ({v.bar.op} {v.bar.bound}) {mark}; {v.note}")
    return lines


def _figure_columns(result: ScenarioResult) -> list[str]:
    names: list[str] = []
    for row in result.rows:
        names += [k for k in row.figures if k not in names]
    return names


def _figure(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scenario_markdown(result: ScenarioResult, machine_line: str, command: str) -> str:
    """The results file of one scenario: description, table, bars with verdicts, notes."""
    s = result.scenario
    lines = [f"# {s.title}", "", f"Machine: {machine_line}  "]
    lines += _timed_table(result, command) if s.timed else _measured_table(result, command)
    if result.verdicts:
        lines += ["## Bars", "", "| bar | measured | interval judged | bound | verdict | note |"]
        lines.append("| --- | ---: | --- | --- | --- | --- |")
        for v in result.verdicts:
            value, interval = _shown(v)
            shown = v.verdict if v.verdict != "missed" else "**missed**"
            lines.append(f"| {v.bar.claim} | {value} | {interval} | {v.bar.op} {v.bar.bound} | {shown} | {v.note} |")
        lines.append("")
    if s.notes is not None:
        lines += [*s.notes(result), ""]
    return "\n".join(lines)


def _timed_table(result: ScenarioResult, command: str) -> list[str]:
    s = result.scenario
    extra = _figure_columns(result)
    ref = s.reference or "—"
    lines = [
        f"Command: `{command}`; {result.rounds} rounds (order shuffled per round, one untimed re-warm step "
        f"before each variant) x {result.inner} timed steps per variant (each sample is the median of its steps).",
        "",
        s.about,
        "",
        f"| variant | median step (ms) | IQR (ms) | × {ref} (IQR) | × unfrozen (IQR) | saved activations "
        "| optimizer state | gradients | peak RSS Δ | frozen (params + buffers) | output Δ | correct |"
        + "".join(f" {name} |" for name in extra),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |" + " ---: |" * len(extra),
    ]
    for row in result.rows:
        q1, q3 = row.timing.quartiles()
        lines.append(
            f"| {row.variant} | {_ms(row.timing.median)} | {_ms(q1)}–{_ms(q3)} | {_ratio(row.vs_ideal)} | "
            f"{_ratio(row.vs_unfrozen)} | {_bytes(row.saved_bytes) if row.saved_bytes is not None else '—'} | "
            f"{_bytes(row.optimizer_bytes)} | {_bytes(row.gradient_bytes)} | "
            f"{_bytes(row.peak_bytes) if row.peak_bytes is not None else '—'} | "
            f"{_bytes(row.frozen_bytes) if row.frozen_bytes else '—'} | "
            f"{_difference(row.output_difference)} | {_correct(row)} |"
            + "".join(f" {_figure(row.figures.get(name, '—'))} |" for name in extra)
        )
    for variant, why in {**s.not_applicable, **result.skipped}.items():
        lines.append(f"| {variant} | n/a | | | | | | | | | | {why} |" + " |" * len(extra))
    spread = "no A/A control" if result.spread is None else f"±{result.spread:.3f}"
    return lines + [
        "",
        f"`{ref}{AA}` is the A/A control: a second, independent build of `{ref}`, timed like every other "
        f"variant. A/A spread (how far its ratio's 95 % interval reaches from 1.0): **{spread}**. "
        "Ratios are medians of per-round ratios (both variants timed in the same round); IQR over rounds. "
        "Saved activations: bytes one step saves for backward (`saved_tensors_hooks`, each storage once, "
        "the model's own parameters and buffers excluded) - deterministic. Optimizer state and gradients: "
        "bytes held after the last step. Peak RSS Δ: fresh process per variant, noisy (±3 MiB), secondary. "
        f"Output Δ: max |output − {ref}'s| / max |{ref}'s| on the same batch before any step. Correct: the "
        "frozen parameters and buffers are bit-identical (`torch.equal`) after every step.",
        "",
    ]


def _measured_table(result: ScenarioResult, command: str) -> list[str]:
    """A scenario measured once per variant (``timed=False``): its figures, nothing stepped."""
    s = result.scenario
    extra = _figure_columns(result)
    lines = [
        f"Command: `{command}`; measured once per variant (no step is timed: the figures are the result).",
        "",
        s.about,
        "",
        "| variant |" + "".join(f" {name} |" for name in extra) + " checked |",
        "| --- |" + " ---: |" * len(extra) + " --- |",
    ]
    for row in result.rows:
        figures = "".join(f" {_figure(row.figures.get(name, '—'))} |" for name in extra)
        lines.append(f"| {row.variant} |{figures} {_correct(row)} |")
    for variant, why in {**s.not_applicable, **result.skipped}.items():
        lines.append(f"| {variant} |" + " |" * len(extra) + f" n/a: {why} |")
    return lines + [""]


def summary_markdown(results: list[ScenarioResult], machine_line: str, command: str, notes: list[str]) -> str:
    """The index page: machine, every bar of every scenario with its verdict, links."""
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine_line}  ",
        f"Command: `{command}`",
        "",
        "![step time relative to the hand-written ideal](chart.png)",
        "",
        "| scenario | A/A spread | bar | measured | interval judged | bound | verdict |",
        "| --- | ---: | --- | ---: | --- | --- | --- |",
    ]
    for result in results:
        link = f"[{result.scenario.key}]({result.scenario.key}.md)"
        spread = "—" if result.spread is None else f"±{result.spread:.3f}"
        for v in result.verdicts:
            value, interval = _shown(v)
            shown = v.verdict if v.verdict != "missed" else "**missed**"
            lines.append(
                f"| {link} | {spread} | {v.bar.claim} | {value} | {interval} | {v.bar.op} {v.bar.bound} | {shown} |"
            )
    lines += ["", *notes, ""]
    return "\n".join(lines)


def write_chart(results: list[ScenarioResult], path: Path, machine_line: str) -> None:
    """One PNG: per scenario, each variant's step time as a multiple of the reference."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    results = [r for r in results if any(row.vs_ideal is not None for row in r.rows)]
    if not results:
        return
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.1 * len(results) + 0.8), squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        shown = [(r.variant, r.vs_ideal) for r in result.rows if r.vs_ideal is not None]
        names = [name for name, _ in shown]
        values = [mid for _, (mid, _, _) in shown]
        errors = [[mid - low for _, (mid, low, _) in shown], [high - mid for _, (mid, _, high) in shown]]
        colors = [
            "tab:blue" if n in FROZEN_PATHS else "tab:green" if n.startswith("ideal") else "tab:gray" for n in names
        ]
        ax.barh(names, values, xerr=errors, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(result.scenario.title, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.2f}×", va="center", fontsize=7)
    axes[-1, 0].set_xlabel("median step time / the scenario's reference (lower is faster; bars: IQR)")
    fig.suptitle(machine_line, fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the machine line
    fig.savefig(path, dpi=110)
    plt.close(fig)
