"""Where the time goes in the seed scenario: the wrapper's own per-call cost, and a profile.

The seed's model is so small (three 100x100 matmuls) that Python overhead is a
visible share of a step, so this is where a slow wrapper would show first.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import frozen

from ._models import seed_model
from ._registry import Setup
from ._scenarios import SCENARIOS

__all__ = ["seed_profile"]


def _call_costs(rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per forward call of the frozen part, plain vs through ``Frozen``."""
    model, x = seed_model()
    plain = model[0]
    plain.requires_grad_(False).eval()
    wrapped = frozen.Frozen(plain)
    frozen.settle(nn.Sequential(wrapped))
    unsettled_model, _ = seed_model()
    unsettled = frozen.Frozen(unsettled_model[0])
    empty = nn.Identity()
    calls = {
        "inner chain, plain (ideal)": lambda: plain(x),
        "inner chain via settled Frozen": lambda: wrapped(x),
        "inner chain via unsettled Frozen": lambda: unsettled(x),
        "nn.Identity() call (reference)": lambda: empty(x),
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times = []
            for _ in range(inner):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            samples[name].append(statistics.median(times))
    return {name: statistics.median(s) for name, s in samples.items()}


def _cprofile(variant: str, steps: int) -> tuple[str, float]:
    workload = SCENARIOS[0].build(variant, Setup(torch.device("cpu")))
    for _ in range(20):
        workload.step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        workload.step()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(10)
    stats.print_stats("frozen/_")  # every function of the library itself, however small
    total = stats.total_tt
    # Keep the tables, drop pstats' preambles and absolute paths.
    tables = [
        part[part.index("   ncalls") :].rstrip() for part in out.getvalue().split("Ordered by") if "   ncalls" in part
    ]
    body = "\n\n".join(tables) if tables else "(no calls)"
    for root in (str(Path(torch.__file__).parent.parent), str(Path(frozen.__file__).parent.parent.parent)):
        body = body.replace(root + "/", "")
    return body, total


def seed_profile(full: bool) -> str:
    """A markdown section: per-call cost of the wrapper and cProfile excerpts (CPU)."""
    rounds, inner, steps = (60, 200, 3000) if full else (15, 100, 500)
    costs = _call_costs(rounds, inner)
    base = costs["inner chain, plain (ideal)"]
    lines = [
        "## Where the time goes (seed)",
        "",
        f"Forward call of the frozen part under autograd, {rounds} interleaved rounds of {inner} calls, median:",
        "",
        "| call | µs per call | extra vs plain (µs) |",
        "| --- | ---: | ---: |",
    ]
    for name, seconds in costs.items():
        lines.append(f"| {name} | {seconds * 1e6:.1f} | {(seconds - base) * 1e6:+.1f} |")
    lines += [
        "",
        "A settled `Frozen` adds one `nn.Module.__call__` (hook checks), its `forward`, the "
        "`self.module` lookup (through `nn.Module.__getattr__`, as `module` lives in `_modules`) and the "
        "`torch.is_grad_enabled()` / empty-plan checks; an unsettled one also walks `module.modules()` "
        "on every call to find parameters that still require grad and swaps detached aliases in and out.",
        "",
    ]
    for variant in ("Frozen+settle", "ideal"):
        body, total = _cprofile(variant, steps)
        lines += [
            f"cProfile, {steps} steps of `{variant}` (total {total:.2f} s under the profiler, which inflates "
            "Python-level cost): the top 10 by own time, then every function of `frozen` itself:",
            "",
            "```",
            body,
            "```",
            "",
        ]
    return "\n".join(lines)
