"""How each variant freezes the same parts of the same model, and the fine-tune step builder.

Variants (same weights, same batch, same optimizer settings; only the freezing differs):

* ``unfrozen`` - everything trains: the reference cost of a full step.
* ``optimizer-side`` - every gradient is computed, the frozen parameters are left out of
  the optimizer (Optimisers.jl ``freeze!``, ``optax.freeze``). The model stays in training
  mode, as these approaches leave it: BatchNorm statistics move.
* ``grad-masking`` - every gradient is computed, then the frozen ones are dropped
  (``p.grad = None``) before ``step()``; the optimizer holds every parameter. This is the
  fair form under AdamW: ``torch.optim`` skips a parameter whose ``.grad`` is ``None``, so
  weight decay does not move it (zeroing the gradient instead would let AdamW's decoupled
  weight decay move frozen weights).
* ``ideal`` - hand-written: ``requires_grad_(False)`` and ``eval()`` on the frozen parts,
  optimizer over the parameters that still require grad.
* ``Frozen`` / ``Frozen+settle`` - each part wrapped in :class:`frozen.Frozen`, before and
  after :func:`frozen.settle`; optimizer over :func:`frozen.trainable`.
* ``freeze`` - :func:`frozen.freeze` on the parts' paths (in place).
* ``Frozen+settle bf16`` / ``freeze bf16`` - the same with ``dtype=torch.bfloat16``.

All steps clear gradients with ``set_to_none=True`` and compute them with ``loss.backward()``.
The bars every family asks of the settled ``frozen`` paths live here too (:func:`settled_bars`,
:func:`speedup_bars`), next to the variant names they name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import frozen

from .declare import Bar, Setup
from .timing import Workload

__all__ = [
    "VARIANTS",
    "LOW_PRECISION",
    "SETTLED",
    "BASE",
    "apply_variant",
    "frozen_keys",
    "fine_tune",
    "classify",
    "settled_bars",
    "speedup_bars",
]

VARIANTS = ("unfrozen", "optimizer-side", "grad-masking", "ideal", "Frozen", "Frozen+settle", "freeze")
LOW_PRECISION = ("Frozen+settle bf16", "freeze bf16")
SETTLED = ("Frozen+settle", "freeze")
# The variants of the families added after the first five: no unsettled wrapper, no bf16 storage.
BASE = ("unfrozen", "optimizer-side", "grad-masking", "ideal", "Frozen+settle", "freeze")


def settled_bars(bound: float = 1.03, names: tuple[str, ...] = SETTLED) -> tuple[Bar, ...]:
    """ "Each settled ``frozen`` path costs what the ideal costs": step time / ideal <= bound."""
    return tuple(Bar(f"`{name}` step time / ideal", name, "ideal", bound) for name in names)


def speedup_bars(names: tuple[str, ...] = SETTLED) -> tuple[Bar, ...]:
    """The performance contract: a frozen-backbone step is >= 2x faster than optimizer-side freezing."""
    bars = [Bar(f"optimizer-side step time / `{name}`", "optimizer-side", name, 2.0, ">=") for name in names]
    bars += [Bar(f"`{name}` optimizer state / ideal's", name, "ideal", 1.0, "<=", "optimizer_bytes") for name in names]
    return tuple(bars)


def classify(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Cross-entropy of ``model(*inputs)`` against the batch's last tensor, the labels."""
    *inputs, labels = batch
    return F.cross_entropy(model(*inputs), labels)


def _swap(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, new)


def _wrap(model: nn.Module, parts: Sequence[str], dtype: torch.dtype | None, tied: str | None) -> None:
    options: dict[str, Any] = {k: v for k, v in (("dtype", dtype), ("tied", tied)) if v is not None}
    for part in parts:
        _swap(model, part, frozen.Frozen(model.get_submodule(part), **options))


def apply_variant(
    model: nn.Module, parts: Sequence[str], variant: str, tied: str | None = None
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Apply ``variant`` to ``model``'s ``parts``, then ``model.train()`` as a training loop does.

    ``tied`` is passed to ``Frozen`` / ``freeze`` when given (``"train"``: a part shares a
    weight that deliberately keeps training through another use).

    Returns:
        (the parameters the optimizer gets, the parameters whose gradient is dropped each step).
    """
    frozen_ids = {id(p) for part in parts for p in model.get_submodule(part).parameters()}
    everything = list(model.parameters())
    chosen: tuple[list[nn.Parameter], list[nn.Parameter]]
    if variant == "unfrozen":
        chosen = everything, []
    elif variant == "optimizer-side":
        chosen = [p for p in everything if id(p) not in frozen_ids], []
    elif variant == "grad-masking":
        chosen = everything, [p for p in everything if id(p) in frozen_ids]
    elif variant == "ideal":
        for part in parts:
            model.get_submodule(part).requires_grad_(False)
        chosen = [p for p in everything if p.requires_grad], []
    elif variant in ("Frozen", "Frozen+settle", "Frozen+settle bf16"):
        _wrap(model, parts, torch.bfloat16 if variant.endswith("bf16") else None, tied)
        if variant != "Frozen":
            frozen.settle(model)
        chosen = frozen.trainable(model), []
    elif variant in ("freeze", "freeze bf16"):
        options: dict[str, Any] = {"dtype": torch.bfloat16} if variant.endswith("bf16") else {}
        frozen.freeze(model, *parts, **options | ({"tied": tied} if tied else {}))
        chosen = frozen.trainable(model), []
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS + LOW_PRECISION}")
    # A training loop calls model.train() after building the model; the ideal keeps its
    # frozen parts in eval by hand, as people write it.
    model.train()
    if variant == "ideal":
        for part in parts:
            model.get_submodule(part).eval()
    return chosen


def frozen_keys(model: nn.Module, parts: Sequence[str], variant: str) -> Callable[[], dict[str, torch.Tensor]]:
    """The ``state_dict`` entries under ``parts`` (what must stay bit-identical); none when unfrozen."""
    if variant == "unfrozen":
        return dict
    prefixes = tuple(f"{part}." for part in parts)
    return lambda: {k: v for k, v in model.state_dict(keep_vars=True).items() if k.startswith(prefixes)}


def fine_tune(make: Callable[[Setup], tuple[nn.Module, tuple]], parts: Sequence[str], loss_fn) -> Callable:
    """Builder for "train the rest with AdamW(weight_decay=0.01) while ``parts`` are frozen"."""

    def build(variant: str, setup: Setup) -> Workload:
        model, batch = make(setup)
        model.to(setup.device)
        batch = tuple(t.to(setup.device) for t in batch)
        params, masked = apply_variant(model, parts, variant)
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for p in masked:
                p.grad = None
            optimizer.step()

        def probe() -> torch.Tensor:
            with torch.no_grad():
                return model(*batch[:-1])

        return Workload(step, model, optimizer, frozen_keys(model, parts, variant), probe=probe)

    return build
