"""What happens at a frozen use, call by call: inference behaviour, detached parameters, casts.

Both kinds of frozen use run through this module, so they agree exactly:

* a :class:`~frozen.Frozen` wrapper calls :func:`call_frozen` from its ``forward``;
* the root of a part frozen in place by :func:`frozen.freeze` carries a *guard*, a
  stand-in for its ``forward`` (:class:`GuardedForward`), installed by ``_record.install_guard``.

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
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "GuardedForward",
    "ModuleRef",
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


class ModuleRef:
    """A weak reference to the module a stand-in sits on, that copies and pickles as the module.

    Stand-ins live in their module's ``__dict__`` (``forward``, ``train``, ``_apply``); holding
    the module strongly made every frozen module a reference cycle, freed only when Python's
    cycle collector ran -- a deleted model's frozen weights stayed allocated (on the card) until
    then, while a model frozen by hand was freed at once. ``deepcopy`` and pickle rebuild the
    reference to the copied module (``__reduce__``), so a copy's stand-ins serve the copy.
    """

    __slots__ = ("_ref",)

    def __init__(self, module: nn.Module | None) -> None:
        self._ref = weakref.ref(module) if module is not None else None

    def __call__(self) -> Any:
        return self._ref() if self._ref is not None else None

    def __reduce__(self) -> tuple:
        return (ModuleRef, (self(),))


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


class GuardedForward:
    """Stands in for ``module.forward`` at the root of a part frozen in place (the guard).

    An instance attribute, like the ``train`` stand-in: ``nn.Module.__call__`` keeps its fast
    path (no hooks to dispatch), and a settled part whose slots hold their own parameters
    costs one identity check per parameter. ``inner`` is the module's own instance
    ``forward`` when it had one (Accelerate's hooks set one), else the class's.
    """

    def __init__(self, module: nn.Module, slots: Slots, detach: frozenset[int], inner: Any) -> None:
        self.module_ref, self.slots, self.detach, self.inner = ModuleRef(module), slots, detach, inner
        self.active = True  # False once thawed while something else wrapped this stand-in

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.around(self.forward, *args, **kwargs)

    def around(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``call`` as the guard runs the forward: with the part's slots detached where needed.

        A stand-in that replaces the guard instead of calling it (``frozen.lean``'s convolution)
        runs its own computation through this, so the white box holds under ``functional_call``.
        """
        if not self.active or (not self.detach and slots_intact(self.slots)) or not _differentiating():
            return call(*args, **kwargs)
        swapped = detach_slots(self.slots, self.detach)
        try:
            return call(*args, **kwargs)
        finally:
            # Always put back: functional_call writes the slots' values back into the caller's
            # dict when it ends, so no alias may outlive the call.
            restore_slots(swapped)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The forward this stands in for."""
        if self.inner is not None:
            return self.inner(*args, **kwargs)
        module = self.module_ref()
        return type(module).forward(module, *args, **kwargs)


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
