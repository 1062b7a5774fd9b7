"""What happens at a frozen use, call by call: inference behaviour, detached parameters, casts.

Both kinds of frozen use run through this module, so they agree exactly:

* a :class:`~frozen.Frozen` wrapper calls :func:`call_frozen` from its ``forward``;
* the root of a part frozen in place by :func:`frozen.freeze` carries a *guard*, a
  stand-in for its ``forward`` (:class:`GuardedForward`, layer ``"guard"`` of ``standins.py``),
  installed by ``record.install_guard``.

The white box (contract S1, S12): during a frozen call, every parameter of the part
that still requires grad (a tied parameter that trains through another use), and every
tensor that ``torch.func.functional_call`` substituted for a parameter of the part, is
replaced by a detached alias. The alias shares storage, so values are exact; autograd
and ``torch.func`` transforms simply see a constant, so frozen parameters get no
gradient under ``.backward()`` and a zero one under ``torch.func.grad``/``vmap``/``jacrev``.
A settled part whose slots hold their own frozen parameters detaches nothing: the check
is one identity comparison per parameter.

This module is handed what it needs (slots, storage types); it never looks anything up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .standins import StandIn

__all__ = [
    "GuardedForward",
    "Slots",
    "UsePlan",
    "call_frozen",
    "caller_dtype",
    "cast_floating",
    "detach_slots",
    "keeps_training_flag",
    "restore_slots",
    "slots_intact",
    "slots_of",
    "under_torch_func",
]

# (owner's ``_parameters`` dict, name, parameter): a parameter slot and the Parameter it holds
# when settled. The dict, not the module: a guard on a module that held the module itself would
# keep it in a reference cycle (see ModuleRef).
Slots = tuple[tuple[dict[str, Any], str, Any], ...]
Swapped = list[tuple[dict[str, Any], str, Any]]


def slots_of(modules: Any) -> Slots:
    """The parameter slots of ``modules`` (each module's own parameters, in order)."""
    return tuple((m._parameters, n, p) for m in modules for n, p in m._parameters.items() if p is not None)


def keeps_training_flag(module: nn.Module) -> bool:
    """Whether a frozen ``module`` keeps its parent's train/eval flag instead of eval.

    Hugging Face models checkpoint a layer only when ``gradient_checkpointing and
    training`` are both true; forcing such a layer into eval would silently switch
    checkpointing off where backward still passes through. Its children run in eval, so
    Dropout and BatchNorm keep inference behaviour (docs/concepts.md).
    """
    # Read the instance and class dicts only: transformers deprecates a property on models.
    flag = module.__dict__.get("gradient_checkpointing", type(module).__dict__.get("gradient_checkpointing"))
    return flag is True


def detach_slots(slots: Slots, detach: frozenset[int] | None) -> Swapped:
    """Put a detached alias in each slot that needs one; return what to put back.

    A slot needs one when it holds a tensor other than its own parameter (substituted by
    ``functional_call``), or when its index is in ``detach`` (``None``: every slot, the
    unsettled case) and the value requires grad.
    """
    swapped: Swapped = []
    for index, (owner, name, param) in enumerate(slots):
        current = owner.get(name)
        if current is None:
            continue
        if current is not param or ((detach is None or index in detach) and current.requires_grad):
            swapped.append((owner, name, current))
            owner[name] = current.detach()  # an alias, for one call
    return swapped


def restore_slots(swapped: Swapped) -> None:
    """Undo :func:`detach_slots`."""
    for owner, name, value in reversed(swapped):
        owner[name] = value


def under_torch_func() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``...) is running this call."""
    return torch._C._functorch.maybe_current_level() is not None


def _differentiating() -> bool:
    """Whether a gradient could be taken now: autograd on, or inside a ``torch.func`` transform."""
    return torch.is_grad_enabled() or under_torch_func()


class GuardedForward(StandIn):
    """Stands in for ``module.forward`` at the root of a part frozen in place (the guard).

    An instance attribute, like the ``train`` stand-in: ``nn.Module.__call__`` keeps its fast
    path (no hooks to dispatch), and a settled part whose slots hold their own parameters
    costs one identity check per parameter. Behind it (``previous``) is the module's own
    instance ``forward`` when it had one (Accelerate's hooks set one), else the class's.
    """

    attr, layer = "forward", "guard"

    def __init__(self, module: nn.Module, slots: Slots, detach: frozenset[int]) -> None:
        super().__init__(module)
        self.slots, self.detach = slots, detach

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.around(self.call_previous, *args, **kwargs)

    def around(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``call`` as the guard runs the forward: with the part's slots detached where needed.

        A stand-in in front of the guard that computes instead of calling it (``frozen.lean``'s
        convolution) runs its computation through this, so the white box holds under ``functional_call``.
        """
        if (not self.detach and slots_intact(self.slots)) or not _differentiating():
            return call(*args, **kwargs)
        swapped = detach_slots(self.slots, self.detach)
        try:
            return call(*args, **kwargs)
        finally:
            # Always put back: functional_call writes the slots' values back into the caller's
            # dict when it ends, so no alias may outlive the call.
            restore_slots(swapped)


@dataclass(eq=False)
class UsePlan:
    """How a settled :class:`~frozen.Frozen` wrapper runs its module.

    ``slots`` are all parameter slots under the use; ``detach`` the indices of those that
    still train elsewhere; ``switch`` the modules under the use that other uses may put in
    training mode, switched to eval for the call only when they are (``mode="eval"``);
    ``follow`` the modules used only here that keep the wrapper's train/eval flag
    (gradient checkpointing, see :func:`keeps_training_flag`).
    """

    slots: Slots
    detach: frozenset[int]
    switch: tuple[nn.Module, ...]
    follow: tuple[nn.Module, ...] = ()

    @property
    def direct(self) -> bool:
        """Nothing to detach or switch: the module is called as it is (slots permitting)."""
        return not self.detach and not self.switch


def slots_intact(slots: Slots) -> bool:
    """Whether every slot still holds its own parameter (nothing substituted)."""
    for owner, name, param in slots:
        if owner.get(name) is not param:
            return False
    return True


def call_frozen(plan: UsePlan | None, module: nn.Module, mode: str, args: tuple, kwargs: dict) -> Any:
    """Call ``module`` as a frozen use; ``plan=None`` computes everything live (unsettled)."""
    if plan is None:
        modules = tuple(module.modules())
        plan = UsePlan(slots_of(modules), frozenset(), modules)
        detach: frozenset[int] | None = None
    else:
        detach = plan.detach
    switched = _enter_eval(plan.switch) if mode == "eval" else []
    try:
        if not _differentiating():
            return module(*args, **kwargs)
        swapped = detach_slots(plan.slots, detach)
        try:
            return module(*args, **kwargs)
        finally:
            restore_slots(swapped)
    finally:
        for m in switched:
            m.training = True


def _enter_eval(modules: tuple[nn.Module, ...]) -> list[nn.Module]:
    """Switch the modules in training mode to eval for one call; return them."""
    switched = [m for m in modules if m.training and not keeps_training_flag(m)]
    for m in switched:
        m.training = False
    return switched


# -- low precision at the boundary ------------------------------------------------


def cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    """Cast every floating tensor in ``obj`` (tuples, lists, dicts, dataclasses) to ``dtype``."""
    return _map_tensors(obj, lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t)


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # NamedTuple
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        mapped = {k: _map_tensors(v, fn) for k, v in obj.items()}
        return type(obj)(**mapped) if dataclasses.is_dataclass(obj) else type(obj)(mapped)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def caller_dtype(args: tuple, kwargs: dict, default: torch.dtype) -> torch.dtype:
    """The floating type of the first floating-point tensor argument, else ``default``."""
    stack: list[Any] = [*args, *kwargs.values()]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            if item.is_floating_point():
                return item.dtype
        elif isinstance(item, (tuple, list)):
            stack[:0] = list(item)
        elif isinstance(item, dict):
            stack[:0] = list(item.values())
    return default
