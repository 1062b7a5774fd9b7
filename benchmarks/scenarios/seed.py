"""The seed's benchmark: the Flux.jl ``Frozen`` discussion's model, a frozen chain's gradient, no optimizer.

The discussion: https://github.com/FluxML/Flux.jl/issues/1931. Its results file ends with where the
time goes (:func:`seed_profile`): the model is so small (three 100x100 matmuls) that Python overhead
is a visible share of a step, so this is where a slow wrapper would show first.
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

from ..harness import (
    LOW_PRECISION,
    VARIANTS,
    Scenario,
    Setup,
    Workload,
    apply_variant,
    frozen_keys,
    models,
    settled_bars,
)

__all__ = ["SCENARIOS", "seed_profile"]


def _build_seed(variant: str, setup: Setup) -> Workload:
    model, x = models.seed_model()
    model.to(setup.device)
    x = x.to(setup.device)
    apply_variant(model, ["0"], variant)
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        model(x).abs().sum().backward()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return Workload(step, model, None, frozen_keys(model, ["0"], variant), probe=probe)


_SEED_NA = {
    "optimizer-side": "no optimizer: the seed computes gradients only, and optimizer-side freezing computes exactly the unfrozen gradients",
    "grad-masking": "no optimizer: masking would be the unfrozen gradient computation plus dropping",
}

SCENARIOS = (
    Scenario(
        "seed",
        "The seed's benchmark (the Flux.jl `Frozen` discussion)",
        "`Sequential(Frozen(Sequential(Linear(100,100), ReLU, Linear(100,100), ReLU)), Linear(100,100))`, "
        "`x = rand(100, 100)`; one step = gradient of `sum(abs(m(x)))` with respect to the model via "
        "`loss.backward()` (gradients cleared to `None` first). No optimizer. Frozen part: the inner chain `0`.",
        _build_seed,
        VARIANTS + LOW_PRECISION,
        _SEED_NA,
        bars=settled_bars(1.05),
        inner=30,
        rounds=(8, 40),
        rss=False,
    ),
)


# -- where the time goes ---------------------------------------------------------------------------


def _call_costs(rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per forward call of the frozen part, plain vs through ``Frozen``."""
    model, x = models.seed_model()
    plain = model[0]
    plain.requires_grad_(False).eval()
    wrapped = frozen.Frozen(plain)
    frozen.settle(nn.Sequential(wrapped))
    unsettled_model, _ = models.seed_model()
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
    workload = _build_seed(variant, Setup(torch.device("cpu")))
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
    total = stats.total_tt  # type: ignore[attr-defined]  # pstats keeps it, undocumented
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
