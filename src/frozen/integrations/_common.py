"""What both framework callbacks share: freeze once, sync optimizers, run a schedule."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_mode
from .._errors import FrozenError
from .._freeze import freeze
from .._schedule import GradualUnfreezing, Stage
from ..optim._sync import sync

__all__ = ["FreezePlan", "unwrap_optimizer", "extend_scheduler"]


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer inside Accelerate's / Lightning's wrappers."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class FreezePlan:
    """Targets to freeze before training and stages to thaw during it (framework-neutral).

    Validates its arguments at construction, so a mistake fails when the callback is
    created, not minutes into training.
    """

    def __init__(
        self,
        targets: Sequence[Any],
        *,
        exclude: Any,
        mode: str,
        train_norms: bool,
        unfreeze: Iterable[Stage],
        owner: str,
    ) -> None:
        check_mode(mode)
        self.unfreeze = list(unfreeze)
        for stage in self.unfreeze:
            if not isinstance(stage, Stage):
                raise TypeError(
                    f"{owner}(unfreeze=...): expected frozen.schedule.Stage objects, received {stage!r}. "
                    f"Write unfreeze=[frozen.schedule.Stage(at=2, targets=('backbone',))]."
                )
        self.targets, self.exclude, self.mode, self.train_norms = tuple(targets), exclude, mode, train_norms
        self.schedule: GradualUnfreezing | None = None
        self._frozen_models: set[int] = set()

    def freeze(self, model: nn.Module) -> None:
        """Freeze the targets in ``model`` once (a second ``fit`` does not refreeze thawed parts)."""
        if id(model) in self._frozen_models:
            return
        if self.targets:
            freeze(model, *self.targets, exclude=self.exclude, mode=self.mode, train_norms=self.train_norms)
        self._frozen_models.add(id(model))

    def start(self, model: nn.Module, optimizers: Sequence[Any]) -> None:
        """Make a single optimizer hold exactly the trainable set; attach the schedule to it.

        With several optimizers (a GAN's generator and discriminator) each holds only
        part of the model, so ``sync`` — which makes one optimizer hold *every*
        trainable parameter — does not apply: they are left as built, and a schedule
        is refused. Build them from ``frozen.trainable(part)`` instead.
        """
        raw = [unwrap_optimizer(o) for o in optimizers]
        if len(raw) == 1:
            sync(raw[0], model)
        if self.unfreeze and self.schedule is None:
            if len(raw) != 1:
                raise FrozenError(
                    f"gradual unfreezing (unfreeze=...) needs exactly one optimizer to add thawed "
                    f"parameters to, received {len(raw)}. Expected a single optimizer; with several, "
                    f"thaw by hand and add the parameters to the right one (frozen.optim.sync)."
                )
            self.schedule = GradualUnfreezing(model, raw[0], self.unfreeze)

    def step(self, schedulers: Sequence[Any] = ()) -> list[Stage]:
        """One unit (epoch) done: thaw what is due, extend ``schedulers`` to new groups."""
        thawed = self.schedule.step() if self.schedule is not None else []
        if thawed:
            for scheduler in schedulers:
                extend_scheduler(scheduler)
        return thawed


def extend_scheduler(scheduler: Any) -> None:
    """Teach an LR scheduler about optimizer groups added after it was built.

    torch's schedulers keep one base rate (and, for ``LambdaLR``, one function) per
    group and refuse to step when the optimizer has more groups. A new group gets
    its own rate as base rate and the *last* group's function, so a thawed part
    follows the same warm-up / decay shape as the rest, scaled to its own rate.
    """
    groups = scheduler.optimizer.param_groups
    base_lrs = getattr(scheduler, "base_lrs", None)
    if base_lrs is None:
        return
    for group in groups[len(base_lrs) :]:
        group.setdefault("initial_lr", group["lr"])
        base_lrs.append(group["initial_lr"])
        for name in ("lr_lambdas", "_last_lr"):
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and values:
                values.append(values[-1] if name == "lr_lambdas" else group["lr"])
        # The rate the scheduler would give the group now, at its current step.
        if getattr(scheduler, "lr_lambdas", None):
            group["lr"] = group["initial_lr"] * scheduler.lr_lambdas[-1](scheduler.last_epoch)
