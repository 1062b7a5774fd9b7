"""Frozen middles that gradients cross: a perceptual loss's feature net, a conv-BatchNorm-ReLU middle.

A frozen middle computes input gradients only (no weight gradients): the trained layers before it
get their gradient through it. The deterministic memory figure is the saved-activation bytes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..harness import BASE, LOW_PRECISION, VARIANTS, Bar, Scenario, Setup, classify, fine_tune, models, settled_bars

__all__ = ["SCENARIOS"]


def _perceptual(setup: Setup):
    return models.perceptual_model(1, 8, (4, 4, 4)) if setup.tiny else models.perceptual_model()


def _perceptual_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    z, target = batch
    return F.mse_loss(model(z), target)


def _convbn(setup: Setup):
    return models.convbn_middle(2, 8, 8, 2) if setup.tiny else models.convbn_middle()


SCENARIOS = (
    Scenario(
        "perceptual",
        "Frozen middle: perceptual loss",
        "A trainable generator (latent 64 -> 3 x 32 x 32) judged by a VGG-style feature net "
        "(5 convs); loss = MSE to fixed target features; batch 8; AdamW. Frozen part: `features`, "
        "which gradients must cross (input gradients only, no weight gradients).",
        fine_tune(_perceptual, ["features"], _perceptual_loss),
        VARIANTS + LOW_PRECISION,
        bars=settled_bars(),
        inner=2,
        rounds=(6, 16),
        rss=False,
    ),
    Scenario(
        "convbn-middle",
        "Frozen conv-BatchNorm-ReLU middle (gradients pass through)",
        "A trainable stem conv (3 -> 32), a middle of 6 x conv3x3-BN-ReLU (32 channels, BN with "
        "non-trivial running statistics), a trainable pooled linear head; batch 8 x 3 x 32 x 32; "
        "AdamW. Frozen: `middle` (eval-mode BN: running statistics must stay bit-identical); the stem "
        "gets its gradient through it. The deterministic memory figure is the saved-activation bytes.",
        fine_tune(_convbn, ["middle"], classify),
        BASE,
        bars=settled_bars()
        + (Bar("`freeze` saved-activation bytes / ideal's", "freeze", "ideal", 1.0, "<=", "saved"),),
        inner=2,
        rounds=(6, 16),
    ),
)
