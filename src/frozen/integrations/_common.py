"""What both framework callbacks share: freeze once, sync optimizers, run a schedule."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .. import freeze
from .._checks import check_mode
from .._core import settle_flips
from .._errors import FrozenError
from ..optim import STATE_POLICIES, sync
from ..schedule import GradualUnfreezing, Stage
from ._schedulers import extend_scheduler

__all__ = ["CallbackPlan", "unwrap_optimizer", "unwrap_model", "extend_scheduler", "UNITS", "NORM_CHOICES"]

UNITS = ("epoch", "step")
# train_norms=: False, True (every normalisation layer: BatchNorm, LayerNorm, GroupNorm, ...),
# or "batchnorm" (BatchNorm only: Lightning's train_bn=True, for people migrating from it).
NORM_CHOICES = (False, True, "batchnorm")


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer inside Accelerate's / Lightning's wrappers.

    Accelerate's ``AcceleratedOptimizer`` is itself an ``Optimizer`` subclass without
    hooks of its own: go inside whenever the inner object is an optimizer too.
    """
    while hasattr(optimizer, "optimizer") and (
        isinstance(optimizer.optimizer, torch.optim.Optimizer) or not isinstance(optimizer, torch.optim.Optimizer)
    ):
        optimizer = optimizer.optimizer
    return optimizer


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / ``torch.compile`` wrappers (``.module`` / ``._orig_mod``).

    Selectors name paths of the user's model, and the optimizer holds its parameters.
    """
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else None
        )
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class CallbackPlan:
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
        train_norms: bool | str,
        unfreeze: Iterable[Stage],
        owner: str,
        state: str = "drop",
        unit: str = "epoch",
    ) -> None:
        check_mode(mode)
        if not (train_norms is True or train_norms is False or train_norms == "batchnorm"):
            raise FrozenError(
                f"{owner}(train_norms={train_norms!r}): expected True (every normalisation layer keeps "
                f"training), False, or 'batchnorm' (BatchNorm only, like Lightning's train_bn=True)."
            )
        self.unfreeze = list(unfreeze)
        for stage in self.unfreeze:
            if not isinstance(stage, Stage):
                raise TypeError(
                    f"{owner}(unfreeze=...): expected frozen.schedule.Stage objects, received {stage!r}. "
                    f"Write unfreeze=[frozen.schedule.Stage(at=2, targets=('backbone',))]."
                )
        if state not in STATE_POLICIES or unit not in UNITS:
            raise FrozenError(
                f"{owner}(state={state!r}, unit={unit!r}): expected state in {STATE_POLICIES!r} (optimizer state of "
                f"frozen parameters) and unit in {UNITS!r} (what Stage.at counts)."
            )
        self.targets, self.exclude, self.mode, self.train_norms = tuple(targets), exclude, mode, train_norms
        self.state, self.unit = state, unit
        self.schedule: GradualUnfreezing | None = None
        # Weak: a freed model's id() can be handed to a fresh one, which must still be frozen.
        self._frozen_models: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def freeze(self, model: nn.Module) -> None:
        """Freeze the targets in ``model`` once (a second ``fit`` does not refreeze thawed parts)."""
        if model in self._frozen_models:
            return
        self.refreeze(model)

    def refreeze(self, model: nn.Module) -> None:
        """Freeze the targets in ``model`` now, thawed stages included: the plan's state before any stage."""
        if self.targets:
            exclude = tuple(self.exclude) if isinstance(self.exclude, (tuple, list)) else (self.exclude,)
            train_norms = self.train_norms is True
            if self.train_norms == "batchnorm":
                exclude = (*exclude, nn.modules.batchnorm._BatchNorm)
            freeze(model, *self.targets, exclude=exclude, mode=self.mode, train_norms=train_norms)
        self._frozen_models.add(model)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with its callback (Lightning's ddp_spawn): a WeakSet cannot be, and the models
        # it names are not the copies the other process gets (which carry their freeze state).
        state = dict(self.__dict__)
        state["_frozen_models"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._frozen_models = weakref.WeakSet()

    def froze(self, model: nn.Module) -> bool:
        """Whether this plan froze ``model`` before (the same object, still alive)."""
        return model in self._frozen_models

    def start(self, model: nn.Module, optimizers: Sequence[Any], schedulers: Sequence[Any] = ()) -> None:
        """Make a single optimizer hold exactly the trainable set; bind a fresh schedule to it.

        Every call binds a new schedule to the optimizer it is given, so one callback
        serves several ``fit()`` / ``train()`` calls, each with its own optimizer; the
        progress restarts at 0 (a resumed run restores it afterwards). Groups ``sync``
        adds here (``train_norms`` with a head-only optimizer) are taught to
        ``schedulers``, which already exist.

        With several optimizers (a GAN's generator and discriminator) each holds only
        part of the model, so ``sync`` — which makes one optimizer hold *every*
        trainable parameter — does not apply: they are left as built, and a schedule
        is refused. Build them from ``frozen.trainable(part)`` instead.
        """
        raw = [unwrap_optimizer(o) for o in optimizers]
        # A flag switched on inside a frozen part before training: off again, as at every step,
        # so that the optimizer is synced to the plan's trainable set.
        settle_flips(model, "FreezeCallback (training start)")
        if self.unfreeze and len(raw) != 1:
            raise FrozenError(
                f"gradual unfreezing (unfreeze=...) needs exactly one optimizer to add thawed "
                f"parameters to, received {len(raw)}. Expected a single optimizer; with several, "
                f"thaw by hand and add the parameters to the right one (frozen.optim.sync)."
            )
        if len(raw) == 1:
            sync(raw[0], model, state=self.state)
            for scheduler in schedulers:
                extend_scheduler(scheduler)
        self.schedule = GradualUnfreezing(model, raw[0], self.unfreeze, state=self.state) if self.unfreeze else None

    def advance(self, to: int, schedulers: Sequence[Any] = ()) -> list[Stage]:
        """``to`` units done: thaw what is due, extend ``schedulers`` to new groups; return the stages thawed."""
        thawed = self.schedule.advance(to) if self.schedule is not None else []
        if thawed:
            for scheduler in schedulers:
                extend_scheduler(scheduler)
        return thawed
