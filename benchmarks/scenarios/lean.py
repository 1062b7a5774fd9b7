"""A lean frozen middle: ``frozen.lean`` on a frozen conv-BN-ReLU middle that gradients cross.

Input-gradient-only convolutions (no weight gradient is ever computed) with each BatchNorm folded
into its convolution: fewer saved activations and less backward work than the ideal, which still
saves what a weight gradient would need.
"""

from __future__ import annotations

import torch

from frozen import lean

from ..harness import Bar, Scenario, Setup, Workload, apply_variant, classify, frozen_keys, models

__all__ = ["SCENARIOS"]


def _build_lean(variant: str, setup: Setup) -> Workload:
    model, batch = models.convbn_middle(2, 8, 8, 2) if setup.tiny else models.convbn_middle()
    model.to(setup.device)
    batch = tuple(t.to(setup.device) for t in batch)
    params, _ = apply_variant(model, ["middle"], "ideal" if variant == "ideal" else "freeze")
    if variant == "lean":
        lean(model, "middle")
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        classify(model, batch).backward()
        optimizer.step()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(batch[0])

    return Workload(step, model, optimizer, frozen_keys(model, ["middle"], variant), probe=probe)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="lean-middle",
        title="Frozen conv-BN-ReLU middle (6 blocks), lean backward",
        about="Trainable stem conv, 6 frozen conv-BN-ReLU blocks (32 channels, 32x32, BatchNorm with non-trivial "
        "running statistics), trainable pooled head; batch 8. `lean` = frozen.freeze + frozen.lean: "
        "input-gradient-only convolutions, each BatchNorm folded into its convolution.",
        build=_build_lean,
        variants=("ideal", "freeze", "lean"),
        bars=(
            Bar("saved-activation bytes / ideal", "lean", "ideal", 0.5, "<=", "saved"),
            Bar("step time / ideal", "lean", "ideal", 0.95),
        ),
        inner=3,
        rss=False,
    ),
)
