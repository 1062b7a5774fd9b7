"""``settle``: make every ``requires_grad`` flag agree with the contract (S8), and plan the calls.

``settle`` is the only writer of ``requires_grad`` in the library (S14). It also
computes, once, what each frozen use does per call (``_call.py``): the slots a
``Frozen`` wrapper or the root of an in-place part guards, which of them still train
through another use (tied), and which modules a wrapper must switch to eval per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from .._checks import check_model
from .._errors import FrozenError, TiedParameterError, TiedParameterWarning
from ..distributed import watch
from .call import UsePlan, keeps_training_flag, slots_of
from .flips import forget_flips
from .record import LOCK, install_guard, is_marked, record_of, rows_of, set_switched_off
from .record import switched_off as library_switched_off
from .tree import ModuleUse, ParamUse, join
from .view import View
from .wrapper import Frozen

__all__ = ["settle", "settle_flags", "settle_flips"]


def settle(model: nn.Module) -> nn.Module:
    """Set every parameter's ``requires_grad`` to "is trainable in ``model``"; return ``model``.

    After ``settle``, tools that read ``requires_grad`` — DistributedDataParallel
    (no ``find_unused_parameters`` needed), FSDP, ``torch.compile``, Hugging Face's
    Trainer — see exactly the trainable set, and a ``Frozen`` wrapper's call does no
    per-parameter work beyond one identity check per parameter: it detaches only
    parameters that are also trained through another use (tied weights), and tensors
    that ``torch.func.functional_call`` substituted for frozen ones.

    Rules:
        * a parameter reached only through frozen uses gets ``requires_grad=False``,
          and its ``.grad`` is set to ``None`` when settle switches it off: an
          optimizer that still holds it (no :func:`frozen.optim.sync` yet) skips it
          instead of moving it by a stale gradient, momentum or weight decay;
        * a parameter the library switched off earlier and that is trainable again
          (after ``thaw``, or a new plain use) gets ``requires_grad=True`` back — the
          record follows the parameter object, wherever it moved;
        * a parameter the *user* set to ``requires_grad=False`` is never turned on;
        * a parameter reached only through frozen uses whose flag someone else turned on
          (``p.requires_grad_(True)``, PEFT's ``set_adapter``) is turned off again: only
          :func:`frozen.thaw` undoes a freeze. Settle warns with :class:`frozen.ForeignFlagWarning`
          naming it, unless an earlier call (``frozen.trainable``, ``report``...) already
          told of that flip; until settled, those calls count it as trainable, as it gets a gradient;
        * a module under a ``Frozen`` part in ``mode="eval"`` that is used only that way
          is put in eval mode once, so its calls need no per-call mode switching;
        * a ``Frozen`` use of a parameter that still trains through another use is a
          white box for that parameter, and settle warns once with
          :class:`frozen.TiedParameterWarning` naming both paths.

    Settle again after changing flags or structure by hand. :func:`frozen.freeze` and
    :func:`frozen.thaw` settle the model themselves.

    Raises:
        frozen.FrozenError: a parameter that must train again was created under
            ``torch.inference_mode()`` and can never require grad. Nothing is changed.

    Example:
        >>> import torch, frozen
        >>> net = frozen.settle(torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 1)))
        >>> [p.requires_grad for p in net.parameters()]
        [False, False, True, True]
    """
    check_model(model, "frozen.settle")
    return settle_flags(model)


def settle_flags(
    model: nn.Module,
    *,
    user_frozen: Sequence[nn.Parameter] = (),
    pin: bool = True,
    view: View | None = None,
    function: str = "frozen.settle",
) -> nn.Module:
    """:func:`settle`, after first setting ``requires_grad=False`` on ``user_frozen``.

    ``frozen.load_state`` restores the flags the user had turned off through this, so
    that every ``requires_grad`` write of the library happens here. ``pin=False`` (thaw)
    leaves every train/eval flag as it is: thawing restores modes exactly, and wrappers
    whose modules are in training mode switch them per call instead. ``view``: the
    caller's walk of ``model`` (:class:`View`), re-read here rather than walked again.
    ``function``: the public call settling, named by a warning about flags flipped outside frozen.
    """
    with LOCK:
        view = View(model) if view is None else view.refresh()
        uses = view.uses
        user_ids = {id(p) for p in user_frozen}
        wanted = view.wanted - user_ids
        restored = {key: use for key, use in view.flipped.items() if key not in user_ids}
        _check_can_train(view.params, wanted)
        plans = _plan_wrappers(uses, wanted, pin)
        for wrapper, path, plan, _ in plans:
            if plan.detach and wrapper.tied == "error":
                _check_tied_use(wrapper, path, uses, [p for i, (_, _, p) in enumerate(plan.slots) if i in plan.detach])
        for param in user_frozen:
            param.requires_grad = False  # the user's own flag, as saved
        _write_flags(view.params, wanted)
        if restored:
            forget_flips(uses, restored, function)
        _attach_rows(view.params)
        _apply_wrapper_plans(plans, uses)
        _guard_roots(uses, wanted)
        watch(model)  # a DistributedDataParallel built by hand over it: a stale reducer raises at its next forward
    return model


def settle_flips(model: nn.Module, function: str) -> bool:
    """Settle ``model`` when a flag the library turned off was turned on by someone else; return whether it did.

    For a training loop's callback (each step): one walk of the model, settling only when it
    finds a flip.
    """
    view = View(model)
    if not view.flipped:
        return False
    settle_flags(model, view=view, function=function)
    return True


def _check_can_train(params: list[ParamUse], wanted: set[int]) -> None:
    """Refuse, before any change, a parameter that must train again but never can."""
    for use in params:
        param = use.param
        if id(param) in wanted and not param.requires_grad and param.is_inference():
            path = use.path
            raise FrozenError(
                f"frozen: the parameter at {path!r} must train again, but it was created under "
                f"torch.inference_mode() and can never require grad. Expected a model built outside "
                f"inference_mode; rebuild it there (or clone its parameters outside it). Nothing was changed."
            )


def _write_flags(params: list[ParamUse], wanted: set[int]) -> None:
    # Read before writing: a slot record (a copied model's) names the flag's owner for every slot of it.
    off = {id(u.param) for u in params if library_switched_off(u.param, u.owner, u.name)}
    for use in params:
        param = use.param
        if id(param) not in wanted and param.requires_grad:
            param.requires_grad = False  # not requires_grad_(): lazy (uninitialised) parameters refuse methods
            # A gradient left from before the freeze (frozen between backward and step, or a zero
            # tensor from zero_grad(set_to_none=False)) would let an optimizer that still holds the
            # parameter move it by that gradient, momentum or weight decay; with None it skips it.
            param.grad = None
            set_switched_off(param, True, use.owner, use.name)
            off.add(id(param))
        elif id(param) in wanted and not param.requires_grad:
            param.requires_grad = True  # trainable_ids counts it only when the library switched it off
            set_switched_off(param, False, use.owner, use.name)
        elif id(param) in wanted:
            set_switched_off(param, False, use.owner, use.name)  # a slot record left by a replaced object
        elif id(param) in off:
            set_switched_off(param, True, use.owner, use.name)  # every slot of it carries the entry


def _attach_rows(params: list[ParamUse]) -> None:
    """Give each row-frozen parameter that requires grad now its gradient hook (``frozen._rows``).

    A hook cannot be put on a tensor that needs no gradient, so rows frozen (or copied) while
    their parameter was frozen whole get theirs here, when a thaw lets the parameter train.
    """
    for use in params:
        rows = rows_of(use.owner).get(use.name)
        if rows is not None and use.param.requires_grad:
            rows.attach(use.param)


def _plan_wrappers(
    uses: list[ModuleUse], wanted: set[int], pin: bool
) -> list[tuple[Frozen, str, UsePlan, list[nn.Module]]]:
    """Each wrapper's per-call plan and the modules to pin in eval; change nothing."""
    kinds: dict[int, set[str]] = {}  # module id -> how it is used: "eval", "inherit", "plain"
    for use in uses:
        kinds.setdefault(id(use.module), set()).add(use.mode or "plain")
    plans = []
    for use in uses:
        wrapper = use.wrapper
        if not isinstance(wrapper, Frozen):
            continue
        region = list(use.module.modules())
        slots = slots_of(region)
        detach = frozenset(i for i, (_, _, p) in enumerate(slots) if id(p) in wanted)
        pinned: list[nn.Module] = []
        switch: tuple[nn.Module, ...] = ()
        if wrapper.mode == "eval":
            # Used only here (and at other frozen-eval uses): eval once, no per-call switching.
            only_here = [m for m in region if kinds.get(id(m), {"eval"}) == {"eval"}]
            pinned = [m for m in only_here if pin or not m.training]
            switch = tuple(m for m in region if not any(m is p for p in pinned))
        follow = tuple(m for m in pinned if keeps_training_flag(m))
        plans.append((wrapper, use.path, UsePlan(slots, detach, switch, follow), pinned))
    return plans


def _apply_wrapper_plans(plans: list[tuple[Frozen, str, UsePlan, list[nn.Module]]], uses: list[ModuleUse]) -> None:
    for wrapper, path, plan, pinned in plans:
        for m in pinned:
            m.training = wrapper.training and keeps_training_flag(m)
        wrapper.set_plan(plan)
        if plan.detach:
            shared = [p for i, (_, _, p) in enumerate(plan.slots) if i in plan.detach]
            _check_tied_use(wrapper, path, uses, shared)


def _check_tied_use(wrapper: Frozen, path: str, uses: list[ModuleUse], shared: list[Any]) -> None:
    """Say (once per wrapper) that a ``Frozen`` use's parameters still train elsewhere, per ``tied=``."""
    warned: set[int] = wrapper.__dict__.setdefault("_warned_tied", set())
    fresh = [p for p in shared if id(p) not in warned]
    if not fresh or wrapper.tied == "train":
        return
    ids = {id(p) for p in fresh}
    training = sorted(
        {join(u.path, n) for u in uses if not u.frozen for n, p in u.module._parameters.items() if id(p) in ids}
    )
    message = (
        f"frozen.settle: the Frozen use at {path!r} shares parameters that still train through "
        f"{', '.join(repr(t) for t in training)}. That use is a white box (no gradient through it), but "
        f"the values change through the other use. To freeze them everywhere, freeze that use too "
        f"(frozen.freeze(model, {training[0]!r})); to say the sharing is deliberate (a stop-gradient "
        f"branch), wrap with frozen.Frozen(..., tied='train')."
    )
    if wrapper.tied == "error":
        raise TiedParameterError(message + " Nothing was changed.")
    warned.update(ids)
    warnings.warn(message, TiedParameterWarning, stacklevel=3)


def _guard_roots(uses: list[ModuleUse], wanted: set[int]) -> None:
    """Install the white-box guard at each root of an in-place part and at each frozen slot."""
    guards: dict[int, tuple[nn.Module, list]] = {}
    parents: dict[str, ModuleUse] = {use.path: use for use in uses}
    for use in uses:
        if use.wrapper is None and is_marked(use.module) and use.mode is not None:
            parent = parents.get(use.path.rpartition(".")[0]) if use.path else None
            root = parent is None or not (parent.frozen and parent.wrapper is None and is_marked(parent.module))
            if root and not _inside_wrapper(use, parents):
                entry = guards.setdefault(id(use.module), (use.module, []))
                entry[1].extend(_region_slots(use.module))
        record = record_of(use.module)
        if record is not None and record.frozen_slots and not use.frozen:
            entry = guards.setdefault(id(use.module), (use.module, []))
            entry[1].extend((use.module._parameters, n, use.module._parameters[n]) for n in record.frozen_slots)
    for module, slot_list in guards.values():
        slots = tuple({(id(o), n): (o, n, p) for o, n, p in slot_list if p is not None}.values())
        install_guard(module, slots, frozenset(i for i, (_, _, p) in enumerate(slots) if id(p) in wanted))
    for use in uses:
        record = record_of(use.module)
        if record is not None and record.guard is not None and id(use.module) not in guards:
            install_guard(use.module, (), frozenset())


def _inside_wrapper(use: ModuleUse, parents: dict[str, ModuleUse]) -> bool:
    path = use.path
    while path:
        path = path.rpartition(".")[0]
        parent = parents.get(path)
        if parent is not None and parent.wrapper is not None:
            return True
    return False


def _region_slots(root: nn.Module) -> list[tuple[dict[str, Any], str, Any]]:
    """Parameter slots of the modules frozen in place under ``root``, stopping at unfrozen ones."""
    slots: list[tuple[dict[str, Any], str, Any]] = []
    stack = [root]
    while stack:
        module = stack.pop()
        if isinstance(module, Frozen) or not is_marked(module):
            continue  # a wrapper guards itself; an unmarked module (adapter, excluded norm) trains
        slots.extend(slots_of((module,)))
        stack.extend(reversed([c for c in module._modules.values() if c is not None]))
    return slots
