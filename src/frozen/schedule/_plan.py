"""Gradual unfreezing: thaw parts of a model in order and keep the optimizer in sync."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._checks import check_model, check_optimizer
from .._core import reserve_recompiles
from .._errors import FrozenError
from .._freeze import thaw
from ..distributed import rewrap
from ..optim import STATE_POLICIES, sync
from ._stage import Stage, checked_stages

__all__ = ["Stage", "GradualUnfreezing"]  # Stage is re-exported from _stage


class GradualUnfreezing:
    """Thaw parts of ``model`` on a plan and re-synchronise ``optimizer`` each time.

    Call :meth:`step` once per unit of the plan — after each epoch (or each
    optimizer step, if the plan counts steps), next to ``lr_scheduler.step()``. Freeze
    the parts before training starts (``frozen.freeze``); the schedule only thaws.

    Under ``DistributedDataParallel`` pass the wrapper as ``model``: after each step that
    thawed something the schedule rebuilds it (:func:`frozen.distributed.rewrap`, a
    collective: every rank runs the same plan, so every rank calls it at the same step)
    and :attr:`wrapper` is the one to call from then on.

    Args:
        model: the model, or its ``DistributedDataParallel`` wrapper.
        optimizer: its optimizer; build it from :func:`frozen.optim.param_groups` so
            that parts thawed without their own ``lr`` return to their groups.
        stages: :class:`Stage` objects (any order; applied by ``at``).
        reference_group: index or name of the group ``lr_ratio`` and ``align`` refer
            to (default 0, the first group, as Lightning).
        state: what :func:`frozen.optim.sync` does with a frozen parameter's optimizer
            state, ``"drop"`` (default) or ``"keep"`` (see ``docs/optimizers.md``).
        compiled: the ``torch.compile``-d model you train with, when it is not ``model``
            itself. Each stage is a new freeze configuration and compiles once; the
            schedule makes dynamo keep a graph for every stage
            (:func:`frozen.reserve_recompiles`), so a long plan never falls back to eager
            mode silently. A ``model`` compiled in place (``model.compile()``) or holding
            compiled parts is found without it.

    Raises:
        TypeError: wrong argument types.
        frozen.FrozenError: a stage with ``at < 1`` or with both ``lr`` and
            ``lr_ratio``, or an unknown reference group.

    Example:
        >>> import torch, frozen
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)), "0")
        >>> opt = torch.optim.SGD(frozen.optim.param_groups(net, lr=0.1), lr=0.1)
        >>> plan = frozen.schedule.GradualUnfreezing(net, opt, [frozen.schedule.Stage(2, ("0",))])
        >>> [len(plan.step()) for epoch in range(3)], len(opt.param_groups[0]["params"])
        ([0, 1, 0], 4)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        stages: Sequence[Stage],
        *,
        reference_group: int | str = 0,
        state: str = "drop",
        compiled: nn.Module | None = None,
    ) -> None:
        self.wrapper: DistributedDataParallel | None = None
        if isinstance(model, DistributedDataParallel):
            self.wrapper, model = model, model.module
        check_model(model, "frozen.schedule.GradualUnfreezing")
        if state not in STATE_POLICIES:
            raise FrozenError(
                f"GradualUnfreezing(state={state!r}): expected one of {STATE_POLICIES!r} (what happens to a frozen "
                f"parameter's optimizer state, see frozen.optim.sync)."
            )
        check_optimizer(optimizer, "frozen.schedule.GradualUnfreezing")
        stages = checked_stages(stages, model)
        reserve_recompiles(compiled if compiled is not None else model, len({stage.at for stage in stages}))
        self.model, self.optimizer, self.reference_group = model, optimizer, reference_group
        self.state = state
        self._reference()  # fail now, not at the first thaw
        self.stages = sorted(stages, key=lambda s: s.at)  # stable: same-`at` stages keep order
        self.count = 0
        self.applied: list[int] = []
        self.rates: dict[int, float] = {}  # stage index -> the rate growth set last

    # -- presets -----------------------------------------------------------------------

    @classmethod
    def ulmfit(
        cls, model: nn.Module, optimizer: torch.optim.Optimizer, parts: Sequence[Any], *, every: int = 1
    ) -> GradualUnfreezing:
        """ULMFiT: thaw ``parts`` (earliest layers first) from the last one down, one every ``every`` steps.

        Pair it with ``param_groups(model, parts=parts, lr=..., lr_decay=1/2.6)`` so each
        part returns to its own discriminative group.
        """
        stages = [Stage(every * (k + 1), part) for k, part in enumerate(reversed(list(parts)))]
        return cls(model, optimizer, stages)

    @classmethod
    def backbone_finetuning(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        backbone: Any = "backbone",
        *,
        unfreeze_at: int = 10,
        lr_ratio: float = 0.1,
        growth: float | Callable[[int], float] = 2.0,
        align: bool = True,
    ) -> GradualUnfreezing:
        """Lightning ``BackboneFinetuning``: thaw ``backbone`` at epoch ``unfreeze_at`` into a new
        group at ``lr_ratio`` times the first group's rate, then grow it by ``growth`` each epoch.

        Defaults are Lightning's (``unfreeze_backbone_at_epoch=10``,
        ``backbone_initial_ratio_lr=0.1``, ``lambda_func`` = 2.0, ``should_align=True``).
        Call :meth:`advance` with the epoch index at the *start* of each epoch, after the
        LR scheduler stepped, as Lightning's ``on_train_epoch_start`` does: then the rates
        match Lightning's epoch for epoch.
        """
        stage = Stage(unfreeze_at, backbone, lr_ratio=lr_ratio, name="backbone", growth=growth, align=align)
        return cls(model, optimizer, [stage])

    @classmethod
    def fine_tune(
        cls, model: nn.Module, optimizer: torch.optim.Optimizer, body: Any, *, freeze_epochs: int = 1
    ) -> GradualUnfreezing:
        """fastai ``fine_tune``: train with ``body`` frozen for ``freeze_epochs``, then thaw it.

        The body returns to its groups, so build them with discriminative rates:
        ``param_groups(model, parts=[...], lr=slice(base_lr / 100, base_lr))``.
        """
        return cls(model, optimizer, [Stage(freeze_epochs, body)])

    # -- running -----------------------------------------------------------------------

    def _reference(self) -> dict[str, Any]:
        groups = self.optimizer.param_groups
        ref = self.reference_group
        if isinstance(ref, int) and not isinstance(ref, bool) and -len(groups) <= ref < len(groups):
            return groups[ref]
        for group in groups:
            if isinstance(ref, str) and group.get("name") == ref:
                return group
        raise FrozenError(
            f"GradualUnfreezing(reference_group={ref!r}): no such optimizer group. Expected an index "
            f"below {len(groups)} or one of the names {[g.get('name') for g in groups]!r}."
        )

    def step(self) -> list[Stage]:
        """Count one unit; thaw the stages now due, sync the optimizer, grow rates; return the stages thawed."""
        self.count += 1
        due = [k for k, stage in enumerate(self.stages) if stage.at <= self.count and k not in self.applied]
        for k in due:
            self._thaw(k)
        if due and self.wrapper is not None:
            self.wrapper = rewrap(self.wrapper)  # DDP's reducer must include what just thawed
        for k in self.applied:
            if self.stages[k].growth is not None and k not in due:
                self._grow(k)
        return [self.stages[k] for k in due]

    def advance(self, to: int) -> list[Stage]:
        """Call :meth:`step` until ``to`` units are done; return the stages thawed.

        Idempotent: ``advance(3)`` twice counts three units once. Frameworks call it with
        their own counter (the epoch index at the start of an epoch, the global step),
        so a resumed run that calls it again for a unit already counted changes nothing.
        """
        thawed: list[Stage] = []
        while self.count < to:
            thawed += self.step()
        return thawed

    def _thaw(self, k: int) -> None:
        stage = self.stages[k]
        thaw(self.model, *stage.targets)
        if stage.lr is None and stage.lr_ratio is None:
            sync(self.optimizer, self.model, state=self.state)
        else:
            ref = self._reference()
            options: dict[str, Any] = {"name": stage.group_name}
            if stage.lr is not None:
                options["lr"] = stage.lr
            else:
                options["lr"] = stage.lr_ratio * ref["lr"]
                if "initial_lr" in ref:  # the scheduler's factor lives in ref["lr"]: apply it once
                    options["initial_lr"] = stage.lr_ratio * ref["initial_lr"]
            sync(self.optimizer, self.model, new_group=options, state=self.state)
            group = self._group(stage)
            if group is not None and stage.growth is not None:
                self.rates[k] = group["lr"]
        self.applied.append(k)

    def _group(self, stage: Stage) -> dict[str, Any] | None:
        return next((g for g in self.optimizer.param_groups if g.get("name") == stage.group_name), None)

    def _grow(self, k: int) -> None:
        stage, group = self.stages[k], self._group(self.stages[k])
        if group is None or stage.growth is None:
            return  # nothing was thawed into it (the part had no parameters)
        factor = stage.growth(self.count) if callable(stage.growth) else stage.growth
        lr = self.rates.get(k, group["lr"]) * factor
        if stage.align:
            lr = min(lr, self._reference()["lr"])
        group["lr"] = self.rates[k] = lr

    # -- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return the progress through the plan (JSON-serialisable)."""
        return {"count": self.count, "applied": list(self.applied), "rates": {str(k): v for k, v in self.rates.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict`.

        Only the counters: restore the model's freeze state with ``frozen.load_state``
        and the optimizer with ``frozen.optim.load_state_dict`` (the learning rates the
        schedule set live in the optimizer's groups).
        """
        if not isinstance(state, dict) or not {"count", "applied"} <= set(state) <= {"count", "applied", "rates"}:
            raise FrozenError(
                f"GradualUnfreezing.load_state_dict(state): expected the dict state_dict() returned, with keys 'count' and 'applied', received {state!r}."
            )
        if any(not 0 <= k < len(self.stages) for k in state["applied"]):
            raise FrozenError(
                f"GradualUnfreezing.load_state_dict(state): state['applied'] = {state['applied']!r} names stages this plan does not have (it has {len(self.stages)}). Build the schedule with the same stages as the saved run."
            )
        self.count, self.applied = int(state["count"]), list(state["applied"])
        self.rates = {int(k): float(v) for k, v in state.get("rates", {}).items()}
