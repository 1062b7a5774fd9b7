"""Marking one module as frozen in place: the record, the mode guard, the tied-weight hooks.

:func:`frozen.freeze`, :func:`frozen.freezing` and :func:`frozen.load_state` mark
modules through :func:`mark`; :func:`frozen.thaw` undoes it through :func:`unmark`.
The record lives in ``module.__dict__`` (``_state.INPLACE_MARK``), so it travels with
``copy.deepcopy`` and ``torch.save(model)`` and never reaches a ``state_dict``.

Per-module machinery, kept picklable (module-level functions, small classes):

* ``mode="eval"``: the module's ``train`` is shadowed by an instance attribute
  (:class:`StayInEval`) that runs the class's own ``train`` -- so the children follow
  the requested mode -- and then puts the module itself back in eval. This costs
  nothing per forward call, unlike a forward pre-hook.
* white box for tied parameters (``tied="train"``): a forward pre-hook detaches the
  module's own parameters that still require grad, a forward hook with
  ``always_call=True`` puts them back. The hooks exist only while the module's
  *plan* (set by :func:`frozen.settle`) is not empty, so a settled frozen module
  without tied parameters is called exactly like a plain one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._state import INPLACE_MARK
from ._use import Plan, detach_slots, live_plan, restore_slots

__all__ = ["InplaceRecord", "StayInEval", "mark", "unmark", "record_of"]

_ABSENT = "absent"  # the module had no instance attribute "train" of its own


class InplaceRecord:
    """What freezing changed on one module, so that thawing undoes exactly that."""

    def __init__(self, module: nn.Module, mode: str, tied: str) -> None:
        self.module = module
        self.mode = mode
        self.tied = tied
        # The mode last asked of this module by its parent (or the user) through
        # train()/eval(); thaw gives it back, so the module follows its parent again.
        self.requested_training = module.training
        self.own_train: Any = module.__dict__.get("train", _ABSENT)
        self.tied_slots: tuple[tuple[nn.Module, str], ...] = ()  # slots frozen by tied="freeze"
        self.hook_ids: tuple[int, int] | None = None
        self.active: list[list] = []  # detached slots of the calls in progress
        self._plan: Plan | None = None
        self._sync_hooks()

    @property
    def plan(self) -> Plan | None:
        """Own-parameter slots to detach per call; ``None`` means "compute on each call"."""
        return self._plan

    @plan.setter
    def plan(self, plan: Plan | None) -> None:
        self._plan = plan
        self._sync_hooks()

    def _sync_hooks(self) -> None:
        wanted = self._plan is None or bool(self._plan)
        module = self.module
        if wanted and self.hook_ids is None:
            before = module.register_forward_pre_hook(_detach_own_parameters)
            after = module.register_forward_hook(_restore_own_parameters, always_call=True)
            self.hook_ids = (before.id, after.id)
        elif not wanted and self.hook_ids is not None:
            before_id, after_id = self.hook_ids
            module._forward_pre_hooks.pop(before_id, None)
            module._forward_hooks.pop(after_id, None)
            module._forward_hooks_always_called.pop(after_id, None)
            self.hook_ids = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "active": []}  # calls in progress do not travel

    def __repr__(self) -> str:
        return f"InplaceRecord(mode={self.mode!r}, tied={self.tied!r}, requested_training={self.requested_training})"


class StayInEval:
    """Stands in for ``module.train`` while ``module`` is frozen in place with ``mode="eval"``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        module = self.module
        type(module).train(module, mode)  # the class's own train: children follow ``mode``
        record = record_of(module)
        if record is not None:
            record.requested_training = mode
        module.training = False
        return module


def _detach_own_parameters(module: nn.Module, args: Any) -> None:
    record = record_of(module)
    if record is None:
        return
    plan = (
        ()
        if not torch.is_grad_enabled()
        else record.plan
        if record.plan is not None
        else live_plan(module, recurse=False)
    )
    record.active.append(detach_slots(plan) if plan else [])


def _restore_own_parameters(module: nn.Module, args: Any, output: Any) -> None:
    record = record_of(module)
    if record is not None and record.active:
        restore_slots(record.active.pop())


def record_of(module: nn.Module) -> InplaceRecord | None:
    """The record of ``module`` if it is frozen in place, else ``None``."""
    return module.__dict__.get(INPLACE_MARK)


def mark(module: nn.Module, mode: str, tied: str) -> InplaceRecord:
    """Freeze ``module`` itself in place (not its children): record, mode, hooks."""
    record = InplaceRecord(module, mode, tied)
    module.__dict__[INPLACE_MARK] = record
    if mode == "eval":
        module.__dict__["train"] = StayInEval(module)
        module.training = False
    return record


def unmark(module: nn.Module) -> InplaceRecord:
    """Undo :func:`mark` exactly; the module's mode becomes the one last asked of it."""
    record: InplaceRecord = module.__dict__.pop(INPLACE_MARK)
    record.plan = ()  # removes the hooks
    if record.mode == "eval":
        if record.own_train is _ABSENT or record.own_train == _ABSENT:
            module.__dict__.pop("train", None)
        else:
            module.__dict__["train"] = record.own_train
        module.training = record.requested_training
    return record
