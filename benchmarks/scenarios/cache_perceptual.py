"""Beyond the ideal for a perceptual loss: the targets' features cached, the generated images' not.

``cache-perceptual``: a super-resolution generator trained through a frozen VGG-style feature
net, ``mse(features(generator(low)), features(high))`` over shuffled epochs of a fixed
dataset. The net is a frozen *middle* for the generated images (their gradients cross it)
and a frozen *prefix* for the targets (data): ``frozen.cache(..., grad_inputs="pass")``
runs the first plainly and replays the second from the second epoch on. ``replay (bound)``
is the hand-written alternative, every target's features precomputed once and indexed by
row: the best any cache of the target branch can do. ``cache + lean`` makes the net lean
as well, for the generated images that cross it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from frozen import cache, lean

from ..harness import Bar, Epochs, Scenario, Setup, Workload, apply_variant, frozen_keys, models
from .cache import IDS, REPLAY, cache_figures

__all__ = ["SCENARIOS"]

LEAN = "cache + lean"  # the targets cached, and the generated images cross a lean net
_VARIANTS = ("ideal", "freeze", "cache (fill)", "cache", IDS, REPLAY, LEAN)


class _SuperResolution(nn.Module):
    """An upsampler (2x) judged by the VGG-style feature net of the ``perceptual`` scenario."""

    def __init__(self, tiny: bool) -> None:
        super().__init__()
        width = 4 if tiny else 16
        self.generator = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )
        model, _ = models.perceptual_model(1, 8, (4, 4, 4)) if tiny else models.perceptual_model()
        self.features = model.features


def _data(setup: Setup) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    size, batch = (8, 2) if setup.tiny else (32, 8)
    n = 4 * batch
    g = torch.Generator().manual_seed(1)
    high = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return (F.avg_pool2d(high, 2), high), batch


def _build(variant: str, setup: Setup) -> Workload:
    torch.manual_seed(0)
    model = _SuperResolution(setup.tiny).to(setup.device)
    data, batch = _data(setup)
    epochs = Epochs(tuple(t.to(setup.device) for t in data), batch)
    params, _ = apply_variant(model, ["features"], "ideal" if variant == "ideal" else "freeze")
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    handle = None
    if variant.startswith("cache"):
        handle = cache(model, "features", budget="4GB", store="device", grad_inputs="pass")
    if variant == LEAN:
        lean(model, "features")
    table = None
    if variant == REPLAY:
        with torch.no_grad():
            table = model.features(epochs.data[1])  # every target's features, indexed by dataset row
    first = epochs.first_batch()

    def fill(batch: tuple[torch.Tensor, ...]) -> None:
        with handle.samples(epochs.host_rows) if variant == IDS and handle else nullcontext():
            model.features(batch[1])  # the targets

    if variant in ("cache", IDS, LEAN):  # epochs 2+: one pass over the targets (epoch 1's order) filled the store
        epochs.fill(fill)

    def step() -> None:
        if variant == "cache (fill)" and handle is not None:
            handle.store.drop()  # the first epoch: no target seen before
        optimizer.zero_grad(set_to_none=True)
        low, high = epochs.next()
        generated = model.features(model.generator(low))
        if table is not None:
            target = table[epochs.rows]
        elif variant == IDS and handle is not None:
            with handle.samples(epochs.host_rows):
                target = model.features(high)
        else:
            target = model.features(high)
        F.mse_loss(generated, target).backward()
        optimizer.step()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model.features(model.generator(first[0]))

    return Workload(step, model, optimizer, frozen_keys(model, ["features"], variant), probe=probe,
                    figures=cache_figures(model))  # fmt: skip


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="cache-perceptual",
        title="Perceptual loss over shuffled epochs, the targets' features cached",
        about="A 2x upsampler (16x16 -> 32x32, 2 convs) trains through the VGG-style feature net of "
        "`perceptual` (5 convs, frozen): `mse(features(generator(low)), features(high))`, 32 image pairs, "
        "batch 8, reshuffled each epoch, AdamW. Gradients of the generated images cross the net (a white box); "
        'the targets are data. `cache` variants: `frozen.cache(model, "features", grad_inputs="pass")`, '
        "store on the device; `cache (fill)` is epoch 1 (store emptied before each step), `cache` epochs 2+ "
        "(filled at build time), `cache (ids)` the same keyed by dataset rows. `replay (bound)` = every "
        "target's features precomputed once and indexed by row: the hand-written alternative, and the best "
        'any cache of the target branch can do. `cache + lean` adds `frozen.lean(model, "features")`: the '
        "generated images cross input-gradient-only convolutions whose ReLUs run in place.",
        build=_build,
        variants=_VARIANTS,
        bars=(
            Bar("first (filling) epoch step time / ideal", "cache (fill)", "ideal", 1.05),
            Bar("cached targets step time / replay bound (the cache's own cost)", "cache", REPLAY, 1.05),
        ),
        inner=2,
        rss=False,
    ),
)
