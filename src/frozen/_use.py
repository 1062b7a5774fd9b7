"""What happens at a frozen use, call by call: inference behaviour and detached parameters.

Both kinds of frozen use — a :class:`~frozen.Frozen` wrapper and a module frozen in
place by :func:`frozen.freeze` — run their module through these helpers, so the
two agree exactly.

A *plan* lists the ``(owner, name)`` slots whose parameter must be detached for
the duration of one call: the parameters under the use that still require grad.
Before :func:`frozen.settle` the plan is computed on every call (correct, a little
work per parameter); settle stores it, and for a use whose parameters are frozen
everywhere it is empty, so the call costs nothing beyond the module itself.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["Plan", "live_plan", "detach_slots", "restore_slots", "enter_eval", "restore_modes"]

Plan = tuple[tuple[nn.Module, str], ...]
Swapped = list[tuple[nn.Module, str, Any]]
Modes = list[tuple[nn.Module, bool]]


def live_plan(module: nn.Module, *, recurse: bool = True) -> Plan:
    """Slots under ``module`` whose parameter requires grad right now."""
    owners = module.modules() if recurse else (module,)
    return tuple(
        (owner, name)
        for owner in owners
        for name, param in owner._parameters.items()
        if param is not None and param.requires_grad
    )


def detach_slots(plan: Plan) -> Swapped:
    """Put a detached alias in each slot of ``plan``; return what to put back.

    The alias shares storage with the parameter, so the value is exact; autograd
    simply has no edge from it to the parameter (contract S1).
    """
    swapped: Swapped = []
    try:
        for owner, name in plan:
            param = owner._parameters[name]
            swapped.append((owner, name, param))
            owner._parameters[name] = param.detach()
    except BaseException:
        restore_slots(swapped)
        raise
    return swapped


def restore_slots(swapped: Swapped) -> None:
    """Undo :func:`detach_slots`."""
    for owner, name, param in reversed(swapped):
        owner._parameters[name] = param


def enter_eval(module: nn.Module) -> Modes:
    """Switch ``module``'s subtree to eval for one call; return the modes to restore.

    Used only when a frozen use finds its module in training mode, which happens when
    the same module object is also used (and put in training mode) elsewhere; the
    common case keeps the module in eval and never gets here.
    """
    saved = [(m, m.training) for m in module.modules()]
    module.train(False)
    return saved


def restore_modes(saved: Modes) -> None:
    """Undo :func:`enter_eval`."""
    for m, training in saved:
        m.training = training
