"""The one record ``frozen`` keeps on a module, and the only code that writes it.

Everything the library knows about a module's freeze state lives in one
:class:`Record` under ``module.__dict__["_frozen"]``: whether the module is frozen in
place and how (mode, tied policy, the train/eval mode its parent last asked for), the
parameter slots of this module frozen at this slot only, the slots frozen elsewhere
because of it, its storage dtype, and the stand-ins freezing put on it (the eval
stand-in for ``train``, the white-box guard for ``forward`` at the root of a frozen part),
held here so they can be removed even when something else stands in front of them.
Other modules read it through :func:`record_of` and never write it. The stand-ins and the
record itself go in and out of the module's ``__dict__`` through ``standins.py``.

One fact is not per module: *which flags the library itself turned off*. That is
owned by the parameter object (contract S14), in a registry keyed by identity, so it
survives a parameter moving to another module (``torch.nn.utils.parametrize``
registering or removing a parametrization while frozen). Every slot that holds such a
parameter also names it in its owner's record (``off_slots``): that is what travels
through ``copy.deepcopy`` and ``torch.save`` (a parameter cannot carry it:
``Parameter.__deepcopy__`` drops Python attributes), and a new object found in such a
slot inherits the entry.

All writes happen under :data:`LOCK`, so two threads freezing disjoint parts of one
model cannot lose each other's entries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from .call import GuardedForward, Slots, keeps_training_flag
from .optimizer_loads import guard_loads
from .standins import RECORD, StandIn, attach_record, detach_record, install, remove

__all__ = [
    "KEY",
    "LOCK",
    "Record",
    "StayInEval",
    "Storage",
    "drop_if_empty",
    "ensure_record",
    "install_guard",
    "is_marked",
    "mark",
    "record_of",
    "set_storage",
    "release_slot",
    "rows_of",
    "set_rows",
    "set_switched_off",
    "switched_off",
    "unmark",
    "freeze_slot",
]

KEY = RECORD
LOCK = threading.RLock()

# Parameters whose requires_grad the library turned off (settle is the only writer).
_SWITCHED_OFF: WeakIdKeyDictionary = WeakIdKeyDictionary()


def switched_off(param: torch.Tensor, owner: nn.Module | None = None, name: str = "") -> bool:
    """Whether the library turned this parameter's ``requires_grad`` off (not the user).

    Ownership follows the parameter object. With ``owner``/``name`` it also follows the
    slot when the object there was *replaced* by a new one (FSDP2's ``fully_shard``
    swaps in DTensor parameters, ``load_state_dict(assign=True)`` new ones, a copy of
    the model): the slot's entry answers for the new object, and the next ``settle``
    writes it to the new object. Reads only, so a query (``frozen.trainable``,
    ``frozen.report``) on a copied model changes nothing.
    """
    if param in _SWITCHED_OFF:
        return True
    record = None if owner is None else owner.__dict__.get(KEY)
    return record is not None and name in record.off_slots


def set_switched_off(param: torch.Tensor, off: bool, owner: nn.Module | None = None, name: str = "") -> None:
    """Record (or forget) that the library turned ``param.requires_grad`` off, at ``owner.<name>``."""
    if off:
        _SWITCHED_OFF[param] = True
        if owner is not None:
            ensure_record(owner).off_slots.add(name)
    else:
        _SWITCHED_OFF.pop(param, None)
        record = None if owner is None else owner.__dict__.get(KEY)
        if owner is not None and record is not None:
            record.off_slots.discard(name)
            drop_if_empty(owner)


@dataclass(eq=False)
class Storage:
    """What ``freeze(..., dtype=)`` changed at the root of one low-precision part."""

    dtype: torch.dtype  # the storage type of the part's floating tensors
    original: dict[str, torch.dtype]  # per floating tensor: the type thaw gives back
    fallback: torch.dtype  # the output type when no input is floating
    handles: list[RemovableHandle] = field(default_factory=list)  # boundary casts
    keeper: Any = None  # the stand-in for "_apply" that keeps the storage type (precision.KeepStorage)


@dataclass(eq=False)
class Record:
    """All that ``frozen`` knows about one module. Written only through this module's functions."""

    mode: str | None = None  # "eval"/"inherit" when frozen in place, else None
    tied: str = "freeze"  # the tied policy it was frozen with
    requested_training: bool = True  # the mode last asked of it; thaw gives it back
    stay_in_eval: StayInEval | None = None  # the stand-in for "train" of a part frozen with mode="eval"
    tied_slots: tuple[tuple[nn.Module, str], ...] = ()  # slots frozen elsewhere because of it
    frozen_slots: dict[str, str] = field(default_factory=dict)  # own slots frozen here -> "tied" or "selected"
    storage: Storage | None = None
    guard: GuardedForward | None = None  # the white-box guard at the root of a frozen part
    off_slots: set[str] = field(default_factory=set)  # own slots whose flag the library turned off
    rows: dict[str, Any] = field(default_factory=dict)  # own slots with frozen rows -> their rows (frozen._rows)
    rows_hook: RemovableHandle | None = None  # the forward pre-hook watching those slots, while there are any

    @property
    def is_empty(self) -> bool:
        """Nothing recorded: the module is as if the library never touched it."""
        return (
            self.mode is None
            and not self.tied_slots
            and not self.frozen_slots
            and self.storage is None
            and self.guard is None
            and not self.off_slots
            and not self.rows
        )


def record_of(module: nn.Module) -> Record | None:
    """The record of ``module``, or ``None`` when the library keeps nothing on it."""
    return module.__dict__.get(KEY)


def is_marked(module: nn.Module) -> bool:
    """Whether ``module`` is frozen in place (by ``freeze``, ``freezing`` or ``load_state``)."""
    record = module.__dict__.get(KEY)
    return record is not None and record.mode is not None


def ensure_record(module: nn.Module) -> Record:
    """The record of ``module``, created empty if it has none."""
    record = module.__dict__.get(KEY)
    if record is None:
        record = Record()
        attach_record(module, record)
        guard_loads()  # frozen governs a module now: a plain optimizer load at another freeze state names the fix
    return record


def drop_if_empty(module: nn.Module) -> None:
    """Remove the record when nothing is left in it, so a thawed module has no trace."""
    record = module.__dict__.get(KEY)
    if record is not None and record.is_empty:
        detach_record(module)


# -- frozen in place ---------------------------------------------------------------


class StayInEval(StandIn):
    """Stands in for ``module.train`` while ``module`` is frozen in place with ``mode="eval"``.

    It runs the ``train`` behind it (the module's own if it had one, else the class's, so
    children follow the requested mode: each frozen child has its own stand-in) and then
    puts the module back in eval, which costs nothing per forward call, unlike a forward
    pre-hook. A module with gradient checkpointing switched on (Hugging Face's
    ``gradient_checkpointing`` attribute, read together with ``self.training``) keeps the
    requested mode, so that checkpointing stays on where backward passes through; its
    children still run in eval.
    """

    attr, layer = "train", "eval"

    def __call__(self, mode: bool = True) -> nn.Module:
        module = self.module_ref()
        self.call_previous(mode)
        record = record_of(module)
        if record is not None:
            record.requested_training = mode
        module.training = mode and keeps_training_flag(module)
        return module


def mark(module: nn.Module, mode: str, tied: str, requested_training: bool | None = None) -> Record:
    """Freeze ``module`` itself in place (not its children): record and mode guard."""
    record = ensure_record(module)
    record.mode, record.tied = mode, tied
    record.requested_training = module.training if requested_training is None else requested_training
    if mode == "eval":
        record.stay_in_eval = StayInEval(module)
        install(module, record.stay_in_eval)
        module.training = record.requested_training and keeps_training_flag(module)
    return record


def unmark(module: nn.Module) -> tuple[tuple[nn.Module, str], ...]:
    """Undo :func:`mark` exactly; return the slots frozen elsewhere because of it."""
    record = record_of(module)
    assert record is not None and record.mode is not None
    if record.stay_in_eval is not None:
        remove(module, record.stay_in_eval)
        module.training = record.requested_training
    released, record.tied_slots = record.tied_slots, ()
    record.mode, record.stay_in_eval = None, None
    drop_if_empty(module)
    return released


def freeze_slot(owner: nn.Module, name: str, reason: str, holder: nn.Module | None = None) -> None:
    """Freeze ``owner.<name>`` at this slot only (a selected parameter, or a tied use)."""
    ensure_record(owner).frozen_slots.setdefault(name, reason)
    if holder is not None:
        holder_record = ensure_record(holder)
        holder_record.tied_slots += ((owner, name),)


def release_slot(owner: nn.Module, name: str) -> None:
    """Undo :func:`freeze_slot` for ``owner.<name>``."""
    record = record_of(owner)
    if record is not None and record.frozen_slots.pop(name, None) is not None:
        drop_if_empty(owner)


def install_guard(module: nn.Module, slots: Slots, detach: frozenset[int]) -> None:
    """Put, update or remove the white-box guard at the root of a frozen part.

    The guard stands in for the module's ``forward`` (:class:`~frozen._core.call.GuardedForward`):
    for the duration of a call it detaches the parameters of the part that still require
    grad (tied, ``tied="train"``) and any tensor substituted for one of them
    (``torch.func.functional_call``). No slot, no guard. A module keeps one guard object,
    updated in place, at its layer of the chain (``standins.py``): behind a cached part or a
    lean convolution, in front of the module's own instance ``forward``.
    """
    record = ensure_record(module) if slots else record_of(module)
    if record is None:
        return
    guard = record.guard
    if guard is None and slots:
        record.guard = GuardedForward(module, slots, detach)
        install(module, record.guard)
    elif guard is not None and slots:
        guard.slots, guard.detach = slots, detach
    elif guard is not None:
        remove(module, guard)
        record.guard = None
        drop_if_empty(module)


def set_storage(module: nn.Module, storage: Storage | None) -> Storage | None:
    """Attach (or, with ``None``, detach and return) the low-precision record of a part's root."""
    if storage is not None:
        ensure_record(module).storage = storage
        return storage
    record = record_of(module)
    old = None if record is None else record.storage
    if record is not None:
        record.storage = None
        drop_if_empty(module)
    return old


# -- frozen rows ---------------------------------------------------------------------


def rows_of(module: nn.Module) -> Mapping[str, Any]:
    """The frozen rows recorded on ``module``'s own parameter slots: ``{name: rows}`` (read only).

    The rows object belongs to ``frozen._rows`` (its ``FrozenRows``); one object is shared by
    every slot holding the same parameter. Living in the record, it travels with the module
    through ``copy.deepcopy``, pickle and ``torch.save``, which rebuild it for the copy.
    """
    record = module.__dict__.get(KEY)
    return record.rows if record is not None else {}


def set_rows(module: nn.Module, name: str, rows: Any | None, hook: Callable[[nn.Module, Any], None]) -> None:
    """Record (``None``: forget) the frozen rows of ``module.<name>``.

    While the module holds any, it carries ``hook`` as a forward pre-hook (it sees a parameter
    replaced in the slot); the handle is kept here and the hook leaves with ``.remove()``.
    """
    if rows is not None:
        record = ensure_record(module)
        record.rows[name] = rows
        if record.rows_hook is None:
            record.rows_hook = module.register_forward_pre_hook(hook)
        return
    held = record_of(module)
    if held is None or held.rows.pop(name, None) is None:
        return
    if not held.rows and held.rows_hook is not None:
        held.rows_hook.remove()
        held.rows_hook = None
    drop_if_empty(module)
