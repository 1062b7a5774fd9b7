"""The scenarios and how each variant freezes the same part of the same model.

Variants (same weights, same batch, same optimizer settings; only the freezing differs):

* ``unfrozen`` - everything trains: the reference cost of a full step.
* ``optimizer-side`` - every gradient is computed, the frozen parameters are simply
  left out of the optimizer (Optimisers.jl ``freeze!``, ``optax.freeze``). The model
  stays in training mode, as these approaches leave it: BatchNorm statistics move.
* ``grad-masking`` - every gradient is computed and the frozen ones are zeroed before
  ``step()``; the optimizer holds every parameter (AdamW's weight decay still moves
  them, which the correctness column shows).
* ``ideal`` - hand-written: ``requires_grad_(False)`` and ``eval()`` on the frozen part,
  optimizer over the parameters that still require grad.
* ``Frozen`` / ``Frozen+settle`` - the part wrapped in :class:`frozen.Frozen`, before and
  after :func:`frozen.settle`; optimizer over :func:`frozen.trainable`.
* ``freeze`` - :func:`frozen.freeze` on the part's path (in place).

All steps clear gradients with ``set_to_none=True`` and compute them with
``loss.backward()``, so every variant pays the same bookkeeping.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

import frozen

from . import _models
from ._harness import Workload

__all__ = ["VARIANTS", "Scenario", "SCENARIOS", "has_freeze", "has_low_precision", "low_precision_variants"]

VARIANTS = ("unfrozen", "optimizer-side", "grad-masking", "ideal", "Frozen", "Frozen+settle", "freeze")


def has_freeze() -> bool:
    """Whether this build of ``frozen`` has ``frozen.freeze`` (it lands in its own issue)."""
    return hasattr(frozen, "freeze")


def has_low_precision() -> bool:
    """Whether ``Frozen`` takes ``dtype=`` (low-precision frozen weights, issue 5 item 6)."""
    return "dtype" in inspect.signature(frozen.Frozen).parameters


def low_precision_variants() -> tuple[str, ...]:
    """The bfloat16 variants this build supports (``Frozen(dtype=)``, ``freeze(dtype=)``)."""
    found = ()
    if has_low_precision():
        found += ("Frozen+settle bf16",)
    if has_freeze() and "dtype" in inspect.signature(frozen.freeze).parameters:
        found += ("freeze bf16",)
    return found


@dataclass(frozen=True)
class Scenario:
    """One workload measured under several variants.

    Attributes:
        key: file name of its results table.
        title, about: heading and a paragraph describing model, input and step.
        build: ``build(variant, device) -> Workload``.
        not_applicable: variant to the reason it does not apply here.
        inner: steps per timing sample.
        rounds: timing rounds in (quick, full) mode.
        extra: variants beyond :data:`VARIANTS` (reference rows).
        part: the path of the frozen part ("" when it is not one module).
        low_precision: whether the bfloat16 variants apply.
    """

    key: str
    title: str
    about: str
    build: Callable[[str, torch.device], Workload]
    not_applicable: dict[str, str] = field(default_factory=dict)
    inner: int = 1
    rounds: tuple[int, int] = (8, 40)
    extra: tuple[str, ...] = ()
    part: str = ""
    low_precision: bool = True

    def variants(self) -> list[str]:
        low = low_precision_variants() if self.low_precision else ()
        return [v for v in VARIANTS + self.extra + low if v not in self.not_applicable]


def _swap(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, new)


def _freeze_part(model: nn.Module, part: str, variant: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Apply ``variant`` to ``model.<part>``; return (optimizer params, params to mask)."""
    params, masked = _apply(model, part, variant)
    # A training loop calls model.train() after building the model; the ideal keeps
    # its frozen part in eval by hand, as people write it.
    model.train()
    if variant == "ideal":
        model.get_submodule(part).eval()
    return params, masked


def _apply(model: nn.Module, part: str, variant: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    module = model.get_submodule(part)
    frozen_ids = {id(p) for p in module.parameters()}
    everything = list(model.parameters())
    if variant == "unfrozen":
        return everything, []
    if variant == "optimizer-side":
        return [p for p in everything if id(p) not in frozen_ids], []
    if variant == "grad-masking":
        return everything, [p for p in everything if id(p) in frozen_ids]
    if variant == "ideal":
        module.requires_grad_(False)
        return [p for p in everything if p.requires_grad], []
    if variant in ("Frozen", "Frozen+settle"):
        _swap(model, part, frozen.Frozen(module))
        if variant == "Frozen+settle":
            frozen.settle(model)
        return frozen.trainable(model), []
    if variant == "freeze":
        frozen.freeze(model, part)
        return frozen.trainable(model), []
    if variant == "Frozen+settle bf16":
        _swap(model, part, frozen.Frozen(module, dtype=torch.bfloat16))
        frozen.settle(model)
        return frozen.trainable(model), []
    if variant == "freeze bf16":
        frozen.freeze(model, part, dtype=torch.bfloat16)
        return frozen.trainable(model), []
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def _frozen_keys(model: nn.Module, part: str, variant: str) -> Callable[[], dict[str, torch.Tensor]]:
    if variant == "unfrozen":
        return dict
    prefix = f"{part}."
    return lambda: {k: v for k, v in model.state_dict(keep_vars=True).items() if k.startswith(prefix)}


def _fine_tune(make, part: str, loss_fn) -> Callable[[str, torch.device], Workload]:
    """Builder for "train the rest with AdamW while ``part`` is frozen"."""

    def build(variant: str, device: torch.device) -> Workload:
        model, batch = make()
        model.to(device)
        batch = tuple(t.to(device) for t in batch)
        params, masked = _freeze_part(model, part, variant)
        optimizer = torch.optim.AdamW(params, lr=1e-3)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for p in masked:
                if p.grad is not None:
                    p.grad.zero_()
            optimizer.step()

        def probe() -> torch.Tensor:
            with torch.no_grad():
                return model(*batch[:-1])

        return Workload(step, model, optimizer, _frozen_keys(model, part, variant), probe=probe)

    return build


def _build_seed(variant: str, device: torch.device) -> Workload:
    model, x = _models.seed_model()
    model.to(device)
    x = x.to(device)
    _freeze_part(model, "0", variant)
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        model(x).abs().sum().backward()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return Workload(step, model, None, _frozen_keys(model, "0", variant), probe=probe)


def _build_siamese(variant: str, device: torch.device) -> Workload:
    encoder, (x1, x2) = _models.siamese_encoder()
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
        model = _models.Siamese(encoder, target=frozen.Frozen(encoder))
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
    "grad-masking": "no optimizer: masking would be the unfrozen gradient computation plus zeroing",
}
_SIAMESE_NA = {
    "optimizer-side": "the frozen branch's weights are the trainable branch's weights: leaving them out of the optimizer stops both branches",
    "grad-masking": "the gradient is one sum over both branches; no mask can remove only the frozen branch's share",
    "freeze": "freeze works per module, not per call: the encoder is one module used by both branches, so freezing it freezes the trainable branch too",
}

SCENARIOS = (
    Scenario(
        "seed",
        "1. The seed's benchmark (Flux issue 1931)",
        "`Sequential(Frozen(Sequential(Linear(100,100), ReLU, Linear(100,100), ReLU)), Linear(100,100))`, "
        "`x = rand(100, 100)`; one step = gradient of `sum(abs(m(x)))` with respect to the model via "
        "`loss.backward()` (gradients cleared to `None` first). No optimizer. Frozen part: the inner chain `0`.",
        _build_seed,
        _SEED_NA,
        inner=40,
        rounds=(15, 150),
        part="0",
    ),
    Scenario(
        "bert",
        "2a. Frozen-backbone fine-tune: transformer encoder",
        "4-layer BERT (hidden 256, 4 heads, FFN 1024, dropout 0; built from `BertConfig`, no download) "
        "and a linear head on the first token; batch 8 x 64 tokens; one step = cross-entropy, "
        "`backward()`, AdamW(lr=1e-3, weight_decay=0.01). Frozen part: `backbone`.",
        _fine_tune(_models.text_classifier, "backbone", _classify),
        inner=3,
        rounds=(6, 40),
        part="backbone",
    ),
    Scenario(
        "resnet",
        "2b. Frozen-backbone fine-tune: CNN with BatchNorm",
        "A small ResNet (3 stages of conv-BN-ReLU and a residual block, 16/32/64 channels) and a "
        "linear head; batch 16 x 3 x 32 x 32; one step = cross-entropy, `backward()`, AdamW. "
        "Frozen part: `backbone` (its BatchNorm must keep its running statistics).",
        _fine_tune(_models.resnet_classifier, "backbone", _classify),
        inner=3,
        rounds=(6, 50),
        part="backbone",
    ),
    Scenario(
        "perceptual",
        "3. Frozen middle: perceptual loss",
        "A trainable generator (latent 64 -> 3 x 32 x 32) judged by a VGG-style feature net "
        "(5 convs); loss = MSE to fixed target features; batch 8; AdamW. Frozen part: `features`, "
        "which gradients must cross (input gradients only, no weight gradients).",
        _fine_tune(_models.perceptual_model, "features", _perceptual_loss),
        inner=3,
        rounds=(6, 50),
        part="features",
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
        _SIAMESE_NA,
        inner=9,
        rounds=(10, 80),
        extra=("no_grad target",),
        low_precision=False,
    ),
)
