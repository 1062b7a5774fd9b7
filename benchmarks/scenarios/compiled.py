"""``torch.compile`` of a frozen-backbone model: the compiled step costs what the compiled ideal costs.

The first step (forward and backward compilation) is untimed and reported as a figure.
"""

from __future__ import annotations

import time
from typing import cast

import torch
from torch import nn

from ..harness import Scenario, Setup, Workload, apply_variant, classify, frozen_keys, models, settled_bars

__all__ = ["SCENARIOS"]


def _build_compiled(variant: str, setup: Setup) -> Workload:
    model, batch = models.mlp_classifier(8, 32, 2) if setup.tiny else models.mlp_classifier()
    model.to(setup.device)
    batch = tuple(t.to(setup.device) for t in batch)
    params, _ = apply_variant(model, ["backbone"], variant)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    # Tiny mode (the smoke test) traces with dynamo only; inductor takes ~30 s per build on 2 cores.
    # torch.compile of a module returns a module (OptimizedModule), typed as a plain callable.
    compiled = cast(nn.Module, torch.compile(model, backend="eager" if setup.tiny else "inductor"))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        classify(compiled, batch).backward()
        optimizer.step()

    start = time.perf_counter()
    step()  # compiles forward and backward
    first = time.perf_counter() - start

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return compiled(batch[0])

    figures: dict[str, float | int | str] = {"first step incl. compile (s)": round(first, 2)}
    return Workload(step, model, optimizer, frozen_keys(model, ["backbone"], variant), None, probe, lambda: figures)


SCENARIOS = (
    Scenario(
        "compile",
        "`torch.compile` of a frozen-backbone model",
        "An MLP backbone (4 x Linear(256, 256)-ReLU) and a linear head, batch 64; frozen `backbone`; "
        "the whole model passed to `torch.compile` (inductor) *after* freezing; AdamW (eager). "
        "`ideal` = hand-written freeze + compile; `freeze` = `frozen.freeze` + compile. The first "
        "step (forward and backward compilation) is untimed and reported as a figure.",
        _build_compiled,
        ("ideal", "freeze"),
        bars=settled_bars(names=("freeze",)),
        inner=4,
        rounds=(6, 16),
        rss=False,
    ),
)
