"""Teach a torch LR scheduler about optimizer groups added after it was built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["extend_scheduler"]

# Per-group keys that cyclic schedulers (OneCycleLR, CyclicLR) read from every group.
_RATE_KEYS = ("max_lr", "min_lr")
_MOMENTUM_KEYS = ("max_momentum", "base_momentum")


def _follower(function: Callable[[int], float]) -> Callable[[int], float]:
    """A plain function calling ``function``: LambdaLR saves ``None`` for it in ``state_dict``,
    so a checkpoint of the extended scheduler loads into one built before the extension."""

    def follow(step: int) -> float:
        return function(step)

    return follow


def extend_scheduler(scheduler: Any) -> None:
    """Teach an LR scheduler about optimizer groups added after it was built.

    torch's schedulers keep one base rate (and, for ``LambdaLR``, one function; for
    ``ReduceLROnPlateau``, one floor) per group and refuse to step when the optimizer
    has more groups. A new group keeps its ``initial_lr`` (set by the schedule: for
    ``lr_ratio`` it is the ratio times the reference group's base rate) as base rate and
    takes the *last* group's function, so a thawed part follows the same warm-up / decay
    shape as the rest, scaled to its own rate: the schedule factor is applied once. For
    ``OneCycleLR`` / ``CyclicLR`` it gets the last group's peak and floor, scaled by
    the ratio of the two groups' base rates, and its momentum bounds.

    Also repairs a ``LambdaLR`` that loaded a checkpoint of an extended scheduler
    (more base rates than functions). Schedulers without per-group lists (``StepLR``,
    ``ExponentialLR``, ...) need nothing. Example:

        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([w], lr=1.0)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
        >>> opt.step(); sched.step()
        >>> opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1, "initial_lr": 0.1})
        >>> extend_scheduler(scheduler=sched)
        >>> [g["lr"] for g in opt.param_groups]
        [0.5, 0.05]
    """
    groups = scheduler.optimizer.param_groups
    min_lrs = getattr(scheduler, "min_lrs", None)
    if isinstance(min_lrs, list) and min_lrs:
        min_lrs.extend([min_lrs[-1]] * (len(groups) - len(min_lrs)))
    base_lrs = getattr(scheduler, "base_lrs", None)
    if base_lrs is None or not base_lrs:
        return
    known = len(base_lrs)
    if known > len(groups):
        return  # it loaded a checkpoint of more groups than the optimizer has yet
    last = groups[known - 1]
    for group in groups[known:]:
        group.setdefault("initial_lr", group["lr"])
        scale = group["initial_lr"] / last["initial_lr"] if last.get("initial_lr") else 1.0
        for key in _RATE_KEYS:
            if key in last:
                group.setdefault(key, last[key] * scale)
        for key in _MOMENTUM_KEYS:
            if key in last:
                group.setdefault(key, last[key])
        base_lrs.append(group["initial_lr"])
    last_lrs = getattr(scheduler, "_last_lr", None)
    if isinstance(last_lrs, list) and last_lrs:
        last_lrs.extend(group["lr"] for group in groups[len(last_lrs) :])
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if isinstance(lambdas, list) and lambdas:
        while len(lambdas) < len(base_lrs):
            lambdas.append(_follower(lambdas[-1]))
        # The rate the scheduler would give each new group now, at its current step.
        for index in range(known, len(groups)):
            groups[index]["lr"] = base_lrs[index] * lambdas[index](scheduler.last_epoch)
