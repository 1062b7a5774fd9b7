"""A clear error where a plain ``optimizer.load_state_dict`` meets a checkpoint of another freeze state.

``optimizer.state_dict()`` stores parameters by position in their groups. Once a freeze or
thaw mid-run has changed an optimizer's groups (:func:`frozen.optim.sync`), a checkpoint saved
at one freeze state does not fit an optimizer built at another, and torch's own load stops with
"loaded state dict has a different number of parameter groups" (or "... doesn't match the size
of optimizer's group"), which names neither the cause nor the fix.

The optimizer that meets the checkpoint is often one ``frozen`` never saw: a fresh process
rebuilds it from ``frozen.trainable(model)`` and calls ``accelerator.load_state``. torch has no
process-wide load hook (only per-optimizer ones), so the first time ``frozen`` governs a module
in a process (or touches an optimizer) it wraps ``torch.optim.Optimizer.load_state_dict`` once.
The wrapper only *translates* those two ``ValueError`` s of torch into a ``FrozenError`` (itself
a ``ValueError``, so ``except ValueError`` still catches it) naming the saved and current group
sizes and the fixes. It never refuses a load torch accepts, adds no work to a load that
succeeds, and torch raises before it changes anything, so the optimizer is left as it was.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .._errors import FrozenError

__all__ = ["guard_loads"]

_MARK = "_frozen_translates_layout_errors"  # set on the wrapper: installed once per process
# The starts of torch's two layout errors in ``Optimizer.load_state_dict`` (unchanged since torch 1.x).
_TORCH_LAYOUT_ERRORS = (
    "loaded state dict has a different number of parameter groups",
    "loaded state dict contains a parameter group that doesn't match the size",
)


def guard_loads() -> None:
    """Wrap ``torch.optim.Optimizer.load_state_dict`` (once per process) to name the fix of a layout mismatch."""
    original = torch.optim.Optimizer.load_state_dict
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def load_state_dict(self: torch.optim.Optimizer, state_dict: Any) -> None:
        try:
            original(self, state_dict)
        except ValueError as error:  # a FrozenError a pre-hook raised passes too: it never starts like torch's
            if not str(error).startswith(_TORCH_LAYOUT_ERRORS):
                raise
            raise _layout_error(self, state_dict) from error

    setattr(load_state_dict, _MARK, True)
    torch.optim.Optimizer.load_state_dict = load_state_dict  # type: ignore[method-assign]


def _groups(groups: Any) -> tuple[list[int], list[Any]] | None:
    """``(sizes, names)`` of a list of parameter groups, or ``None`` when it is not one."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
        return None
    return [len(g["params"]) for g in groups], [g.get("name") for g in groups]


def _layout_error(optimizer: torch.optim.Optimizer, saved: Any) -> FrozenError:
    theirs = _groups(saved.get("param_groups") if isinstance(saved, dict) else None)
    mine = _groups(optimizer.param_groups)
    described = (
        f"saved has {len(theirs[0])} parameter group(s) of sizes {theirs[0]} (names {theirs[1]}); "
        if theirs is not None
        else ""
    )
    if mine is not None:
        described += f"this optimizer has {len(mine[0])} of sizes {mine[0]} (names {mine[1]}). "
    return FrozenError(
        f"{type(optimizer).__name__}.load_state_dict(saved): {described}Expected the same groups: torch stores "
        f"parameters by position, so a checkpoint saved after a freeze or thaw changed the optimizer's groups "
        f"(frozen.optim.sync) fits only an optimizer at that same freeze state. Fix: with accelerate, call "
        f"frozen.integrations.accelerate.register(accelerator, model) in every run, before "
        f"accelerator.load_state (it saves and restores the freeze state and the optimizer layout); otherwise "
        f"restore the saved freeze state first (frozen.load_state(model, saved_freeze_state), then "
        f"frozen.optim.sync(optimizer, model) with the same new_group options), or save with "
        f"frozen.optim.state_dict(optimizer, model) and load with frozen.optim.load_state_dict(optimizer, model, "
        f"saved). This optimizer was not changed."
    )
