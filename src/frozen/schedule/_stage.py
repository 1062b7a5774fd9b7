"""One stage of a gradual-unfreezing plan, and the validation of a whole plan before any change."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._errors import FrozenError
from .._select import select

__all__ = ["Stage", "checked_stages"]


@dataclass(frozen=True)
class Stage:
    """One step of a plan: thaw ``targets`` once ``at`` units (epochs or steps) are done.

    Args:
        at: the number of :meth:`GradualUnfreezing.step` calls after which to thaw
            (``at=3``: the part trains from epoch 3, counting from 0). At least 1.
        targets: what to thaw, as ``frozen.thaw`` takes it (patterns, modules, ...).
        lr: put the thawed parameters in a new group with this learning rate.
        lr_ratio: same, with ``lr_ratio`` times the reference group's current rate
            (Lightning's ``backbone_initial_ratio_lr``).
        name: the new group's name (default: the targets joined with ``","``).
        growth: after the thaw, multiply the new group's rate by this factor at every
            later step, or by ``growth(count)`` if callable (Lightning's ``lambda_func``).
            The factor applies to the rate the schedule set last (as Lightning's
            ``previous_backbone_lr``), so an LR scheduler's changes in between do not
            compound with it.
        align: with ``growth``, never let the rate pass the reference group's rate
            (Lightning's ``should_align``).

    With ``lr_ratio`` the new group's rate is ``lr_ratio`` times the reference group's
    rate *now*, and its base rate (``initial_lr``, what an LR scheduler multiplies by its
    factor) is ``lr_ratio`` times the reference group's base rate, so the ratio holds
    at every later step under any scheduler: the schedule factor is applied once.

    Without ``lr`` / ``lr_ratio`` the thawed parameters return to the groups that
    record them (see :func:`frozen.optim.sync`).
    """

    at: int
    targets: tuple[Any, ...]
    lr: float | None = None
    lr_ratio: float | None = None
    name: str | None = None
    growth: float | Callable[[int], float] | None = None
    align: bool = True

    def __post_init__(self) -> None:
        # Stage(2, "encoder") means one target, not the characters of a string.
        targets = self.targets
        if isinstance(targets, (str, nn.Module, type)) or callable(targets):
            targets = (targets,)
        object.__setattr__(self, "targets", tuple(targets))

    @property
    def group_name(self) -> str:
        return self.name or ",".join(str(t) for t in self.targets)


def checked_stages(stages: object, model: nn.Module) -> list[Stage]:
    """Validate ``stages`` (types, ``at``, rates, targets) before any change; return them as a list."""
    if isinstance(stages, Stage) or not isinstance(stages, Iterable):
        raise TypeError(
            f"GradualUnfreezing(stages=...): expected a list of frozen.schedule.Stage objects, received "
            f"{type(stages).__name__}. Wrap a single stage in a list: stages=[Stage(at=2, targets=('head',))]."
        )
    checked = list(stages)
    for stage in checked:
        if not isinstance(stage, Stage):
            raise TypeError(
                f"GradualUnfreezing(stages=...): expected frozen.schedule.Stage objects, received {stage!r}. "
                f"Write Stage(at=2, targets=('encoder.layer.11',))."
            )
        if not isinstance(stage.at, int) or stage.at < 1 or (stage.lr is not None and stage.lr_ratio is not None):
            raise FrozenError(
                f"GradualUnfreezing(stages=...): stage {stage!r} is invalid: expected an int at >= 1 "
                f"(the number of step() calls before the thaw) and at most one of lr / lr_ratio. "
                f"Fix that stage; to train a part from the start, leave it unfrozen."
            )
        select(model, *stage.targets)  # a typo in a stage's targets fails now, not hours into training
    return checked
