"""The suite's first five scenarios: the seed, two frozen backbones, a frozen middle, a tied Siamese.

Each builds its model from the same seed for every variant (see ``_variants.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import frozen

from . import _models
from ._harness import Workload
from ._registry import Bar, Scenario, Setup
from ._variants import LOW_PRECISION, VARIANTS, apply_variant, fine_tune, frozen_keys

__all__ = ["SCENARIOS", "settled_bars", "speedup_bars"]

SETTLED = ("Frozen+settle", "freeze")


def settled_bars(bound: float = 1.03, names: tuple[str, ...] = SETTLED) -> tuple[Bar, ...]:
    """ "Each settled ``frozen`` path costs what the ideal costs": step time / ideal <= bound."""
    return tuple(Bar(f"`{name}` step time / ideal", name, "ideal", bound) for name in names)


def speedup_bars(names: tuple[str, ...] = SETTLED) -> tuple[Bar, ...]:
    """The performance contract: a frozen-backbone step is >= 2x faster than optimizer-side freezing."""
    bars = [Bar(f"optimizer-side step time / `{name}`", "optimizer-side", name, 2.0, ">=") for name in names]
    bars += [Bar(f"`{name}` optimizer state / ideal's", name, "ideal", 1.0, "<=", "optimizer_bytes") for name in names]
    return tuple(bars)


def _text(setup: Setup):
    return _models.text_classifier(2, 16, 64, 2) if setup.tiny else _models.text_classifier()


def _resnet(setup: Setup):
    return _models.resnet_classifier(2, 16) if setup.tiny else _models.resnet_classifier()


def _perceptual(setup: Setup):
    return _models.perceptual_model(1, 8, (4, 4, 4)) if setup.tiny else _models.perceptual_model()


def _build_seed(variant: str, setup: Setup) -> Workload:
    model, x = _models.seed_model()
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


def _build_siamese(variant: str, setup: Setup) -> Workload:
    device = setup.device
    encoder, (x1, x2) = _models.siamese_encoder(8 if setup.tiny else 64)
    encoder.to(device)
    x1, x2 = x1.to(device), x2.to(device)

    def stop_gradient_target(x: torch.Tensor) -> torch.Tensor:
        # The hand-written white box: the encoder's function with detached weights.
        detached = {k: v.detach() for k, v in encoder.named_parameters()}
        return torch.func.functional_call(encoder, detached, (x,))

    def no_grad_target(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encoder(x)

    if variant == "unfrozen":
        model = _models.Siamese(encoder, target=encoder)
    elif variant == "ideal":
        model = _models.Siamese(encoder, target_fn=stop_gradient_target)
    elif variant == "no_grad target":
        model = _models.Siamese(encoder, target_fn=no_grad_target)
    elif variant in ("Frozen", "Frozen+settle"):
        model = _models.Siamese(encoder, target=frozen.Frozen(encoder, tied="train"))
        if variant == "Frozen+settle":
            frozen.settle(model)
    else:
        raise ValueError(f"variant {variant!r} does not apply to the Siamese scenario")
    model.to(device).train()
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x1, x2).backward()
        optimizer.step()

    def check() -> tuple[bool | None, str]:
        # S4: the encoder's gradient is the one of the trainable branch only.
        if variant == "unfrozen":
            return None, "trains both branches"
        params = list(encoder.parameters())
        got = torch.autograd.grad(model(x1, x2), params)
        reference = _models.Siamese(encoder, target_fn=stop_gradient_target)
        reference.predictor = model.predictor
        want = torch.autograd.grad(reference(x1, x2), params)
        same = all(torch.equal(a, b) for a, b in zip(got, want))
        return same, "encoder gradient " + ("bit-identical to" if same else "differs from") + " the stop-gradient one"

    return Workload(step, model, optimizer, dict, check)


def _classify(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    *inputs, labels = batch
    return F.cross_entropy(model(*inputs), labels)


def _perceptual_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    z, target = batch
    return F.mse_loss(model(z), target)


_SEED_NA = {
    "optimizer-side": "no optimizer: the seed computes gradients only, and optimizer-side freezing computes exactly the unfrozen gradients",
    "grad-masking": "no optimizer: masking would be the unfrozen gradient computation plus dropping",
}
_SIAMESE_NA = {
    "optimizer-side": "the frozen branch's weights are the trainable branch's weights: leaving them out of the optimizer stops both branches",
    "grad-masking": "the gradient is one sum over both branches; no mask can remove only the frozen branch's share",
    "freeze": "freeze works per module, not per call: the encoder is one module used by both branches, so freezing it freezes the trainable branch too",
}

_ALL = VARIANTS + LOW_PRECISION

SCENARIOS = (
    Scenario(
        "seed",
        "1. The seed's benchmark (Flux issue 1931)",
        "`Sequential(Frozen(Sequential(Linear(100,100), ReLU, Linear(100,100), ReLU)), Linear(100,100))`, "
        "`x = rand(100, 100)`; one step = gradient of `sum(abs(m(x)))` with respect to the model via "
        "`loss.backward()` (gradients cleared to `None` first). No optimizer. Frozen part: the inner chain `0`.",
        _build_seed,
        _ALL,
        _SEED_NA,
        bars=settled_bars(1.05),
        inner=30,
        rounds=(8, 40),
        rss=False,
    ),
    Scenario(
        "bert",
        "2a. Frozen-backbone fine-tune: transformer encoder",
        "4-layer BERT (hidden 256, 4 heads, FFN 1024, dropout 0; built from `BertConfig`, no download) "
        "and a linear head on the first token; batch 8 x 64 tokens; one step = cross-entropy, "
        "`backward()`, AdamW(lr=1e-3, weight_decay=0.01). Frozen part: `backbone`.",
        fine_tune(_text, ["backbone"], _classify),
        _ALL,
        bars=settled_bars() + speedup_bars(),
        inner=2,
        rounds=(6, 16),
        rss=False,
    ),
    Scenario(
        "resnet",
        "2b. Frozen-backbone fine-tune: CNN with BatchNorm",
        "A small ResNet (3 stages of conv-BN-ReLU and a residual block, 16/32/64 channels) and a "
        "linear head; batch 16 x 3 x 32 x 32; one step = cross-entropy, `backward()`, AdamW. "
        "Frozen part: `backbone` (its BatchNorm must keep its running statistics).",
        fine_tune(_resnet, ["backbone"], _classify),
        _ALL,
        bars=settled_bars() + speedup_bars(),
        inner=2,
        rounds=(6, 16),
    ),
    Scenario(
        "perceptual",
        "3. Frozen middle: perceptual loss",
        "A trainable generator (latent 64 -> 3 x 32 x 32) judged by a VGG-style feature net "
        "(5 convs); loss = MSE to fixed target features; batch 8; AdamW. Frozen part: `features`, "
        "which gradients must cross (input gradients only, no weight gradients).",
        fine_tune(_perceptual, ["features"], _perceptual_loss),
        _ALL,
        bars=settled_bars(),
        inner=2,
        rounds=(6, 16),
        rss=False,
    ),
    Scenario(
        "siamese",
        "4. Tied Siamese: one encoder, trainable in one branch, frozen in the other",
        "SimSiam-style: `mse(predictor(encoder(x1)), target(x2))` where `target` is the same encoder "
        "(MLP 256-512-512-128, batch 64). The ideal is hand-written: `torch.func.functional_call(encoder, "
        "{name: p.detach()}, (x2,))` - the same white box as `Frozen` (gradients would still reach `x2`). "
        "`no_grad target` is a reference row: `with torch.no_grad(): encoder(x2)` is cheaper but not a "
        "white box (it also cuts gradients to `x2`). Correctness: the encoder's gradient is bit-identical "
        "to the hand-written stop-gradient gradient (contract S4).",
        _build_siamese,
        ("unfrozen", "ideal", "Frozen", "Frozen+settle", "no_grad target"),
        _SIAMESE_NA,
        bars=settled_bars(names=("Frozen+settle",)),
        inner=6,
        rounds=(6, 24),
        rss=False,
    ),
)
