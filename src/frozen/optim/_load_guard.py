"""A clear error where a plain ``optimizer.load_state_dict`` meets a checkpoint of another freeze state.

``optimizer.state_dict()`` stores parameters by position in their groups. Once
:func:`frozen.optim.sync` has reshaped an optimizer's groups (a freeze or thaw mid-run), a
checkpoint saved at another freeze state has other groups, and torch's own load stops with
"loaded state dict has a different number of parameter groups" (or "... doesn't match the
size of optimizer's group"), which names neither the cause nor the fix. Every optimizer
``frozen`` reshapes or loads gets a load pre-hook that raises a ``FrozenError`` instead,
naming ``frozen.integrations.accelerate.register`` and the by-path helpers.

The hook raises exactly where torch would (group count or a group's size differs), so it
never refuses a load torch accepts; and it stands back while another pre-hook registered after
it may still rearrange the state dict (torch's own check decides then).
"""

from __future__ import annotations

from typing import Any

import torch

from .._errors import FrozenError

__all__ = ["guard_loads"]

_MARK = "_frozen_load_guard"  # set on an optimizer that carries the hook: installed once


def guard_loads(optimizer: torch.optim.Optimizer) -> None:
    """Give ``optimizer`` the load pre-hook (once); ``frozen.optim`` calls this where it touches one."""
    # A wrapper (accelerate's AcceleratedOptimizer, Lightning's) loads through the optimizer it wraps,
    # and may not have run torch's __init__ itself: the hook goes on the innermost one.
    while isinstance(inner := getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = inner
    if getattr(optimizer, _MARK, False) or "_optimizer_load_state_dict_pre_hooks" not in vars(optimizer):
        return
    optimizer.register_load_state_dict_pre_hook(_refuse_other_layout)
    setattr(optimizer, _MARK, True)


def _sizes(groups: Any) -> list[int] | None:
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
        return None
    return [len(g["params"]) for g in groups]


def _refuse_other_layout(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    hooks = list(getattr(optimizer, "_optimizer_load_state_dict_pre_hooks", {}).values())
    if hooks and hooks[-1] is not _refuse_other_layout:
        return  # a later pre-hook may still rearrange ``saved``
    theirs = _sizes(saved.get("param_groups") if isinstance(saved, dict) else None)
    mine = _sizes(optimizer.param_groups)
    if theirs is None or mine is None or theirs == mine:
        return
    names = [g.get("name") for g in saved["param_groups"]]
    raise FrozenError(
        f"{type(optimizer).__name__}.load_state_dict(saved): saved has {len(theirs)} parameter group(s) of "
        f"sizes {theirs} (names {names}); this optimizer has {len(mine)} of sizes {mine} "
        f"(names {[g.get('name') for g in optimizer.param_groups]}). Expected the same groups: torch stores "
        f"parameters by position, and frozen.optim.sync reshaped this optimizer's groups after a freeze or thaw, "
        f"so the checkpoint was saved at another freeze state. Fix: with accelerate, call "
        f"frozen.integrations.accelerate.register(accelerator, model) in every run, before "
        f"accelerator.load_state (it saves and restores the freeze state and the optimizer layout); otherwise "
        f"restore the saved freeze state first (frozen.load_state(model, saved_freeze_state), then "
        f"frozen.optim.sync(optimizer, model) with the same new_group options), or save with "
        f"frozen.optim.state_dict(optimizer, model) and load with frozen.optim.load_state_dict(optimizer, model, "
        f"saved). This optimizer was not changed."
    )
