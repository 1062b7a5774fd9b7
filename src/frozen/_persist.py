"""``state`` / ``load_state``: the in-place freeze state of a model as plain data.

A checkpoint holds tensors (``state_dict``); which parts were frozen in place, how,
and which flags were turned off is not in it. ``state(model)`` returns that as a
JSON-serialisable dict, ``load_state(fresh_model, saved)`` puts it back, so a resumed
run freezes exactly what the interrupted one had frozen (used with
``frozen.optim.load_state_dict`` for exact resume).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import MODES, TIED_POLICIES, check_model
from ._errors import FrozenError, UnknownPathError, closest
from ._freeze import thaw_modules
from ._mark import mark, record_of
from ._precision import lower_precision, precision_of
from ._settle import settle
from ._state import frozen_slot_names, set_frozen_slot, switched_off_names
from ._tree import iter_module_uses, iter_param_uses, join

__all__ = ["state", "load_state", "STATE_VERSION"]

STATE_VERSION = 1
_KEYS = {"version", "frozen", "frozen_slots", "switched_off", "user_frozen"}


def state(model: nn.Module) -> dict[str, Any]:
    """Return the in-place freeze state of ``model`` as a JSON-serialisable dict.

    Keys: ``"version"``; ``"frozen"``: one entry per module frozen in place (by
    :func:`frozen.freeze` or :func:`frozen.freezing`) with its ``path``, ``mode``,
    ``tied`` policy, the ``training`` mode last asked of it, the ``tied_slots``
    (parameter paths frozen at other uses because of it), and for the root of a part
    frozen with ``dtype=`` that type's name (``"dtype": "bfloat16"``); ``"frozen_slots"``: every
    parameter slot frozen that way; ``"switched_off"``: the parameter paths whose
    ``requires_grad`` the library turned off; ``"user_frozen"``: those with
    ``requires_grad=False`` set by the user. Paths are ``state_dict`` style; a module
    or parameter used at several paths is named by its first.

    ``Frozen`` wrappers are part of the model's construction, not of this state.

    Example:
        >>> import torch, frozen
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)), "0")
        >>> saved = frozen.state(net)
        >>> saved["frozen"], saved["switched_off"]
        ([{'path': '0', 'mode': 'eval', 'tied': 'freeze', 'training': True, 'tied_slots': []}], ['0.weight', '0.bias'])
    """
    check_model(model, "frozen.state")
    first_path: dict[int, str] = {}
    for use in iter_module_uses(model):
        first_path.setdefault(id(use.module), use.path)
    frozen, seen = [], set()
    for use in iter_module_uses(model):
        record = record_of(use.module)
        if record is not None and id(use.module) not in seen:
            seen.add(id(use.module))
            slots = [join(first_path.get(id(owner), "?"), name) for owner, name in record.tied_slots]
            entry = {
                "path": use.path,
                "mode": record.mode,
                "tied": record.tied,
                "training": record.requested_training,
                "tied_slots": slots,
            }
            precision = precision_of(use.module)
            if precision is not None:
                entry["dtype"] = str(precision.dtype).removeprefix("torch.")  # freeze(..., dtype=) root
            frozen.append(entry)
    frozen_slots, switched_off, user_frozen, seen = [], [], [], set()
    for use in iter_param_uses(model):
        if first_path[id(use.owner)] != use.path.rpartition(".")[0] or (id(use.owner), use.name) in seen:
            continue  # one entry per slot, under the owner's first path
        seen.add((id(use.owner), use.name))
        if use.name in frozen_slot_names(use.owner):
            frozen_slots.append(use.path)
        if use.name in switched_off_names(use.owner):
            switched_off.append(use.path)
        elif not use.param.requires_grad:
            user_frozen.append(use.path)
    return {
        "version": STATE_VERSION,
        "frozen": frozen,
        "frozen_slots": frozen_slots,
        "switched_off": switched_off,
        "user_frozen": user_frozen,
    }


def load_state(model: nn.Module, saved: dict[str, Any]) -> nn.Module:
    """Make ``model``'s in-place freeze state the one :func:`state` returned; return ``model``.

    Meant for a freshly built model of the same structure (resuming a run): what is
    frozen in place now is thawed, the saved parts are frozen with their saved mode,
    policy and requested train/eval mode, the saved tied slots are frozen, the saved
    ``user_frozen`` parameters get ``requires_grad=False``, and the model is settled,
    which reproduces ``switched_off``. Everything is validated before anything changes.

    Raises:
        TypeError: ``model`` is not a module or ``saved`` is not a dict.
        frozen.FrozenError: ``saved`` is not a state of a known version.
        frozen.UnknownPathError: a saved path does not exist in ``model``.
        Nothing is changed when an error is raised.

    Example:
        >>> import torch, frozen
        >>> def build():
        ...     return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> saved = frozen.state(frozen.freeze(build(), "0"))
        >>> [name for name, _ in frozen.named_trainable(frozen.load_state(build(), saved))]
        ['1.weight', '1.bias']
    """
    check_model(model, "frozen.load_state")
    if not isinstance(saved, dict):
        raise TypeError(
            f"frozen.load_state(model, saved): expected the dict frozen.state(model) returned, received {type(saved).__name__}."
        )
    if set(saved) != _KEYS or saved["version"] != STATE_VERSION:
        raise FrozenError(
            f"frozen.load_state(model, saved): expected a dict with keys {sorted(_KEYS)} and version "
            f"{STATE_VERSION}, as frozen.state(model) returns, received keys {sorted(saved)} "
            f"(version {saved.get('version')!r}). Save the state with frozen.state(model)."
        )
    modules = {}
    for use in iter_module_uses(model):
        modules.setdefault(use.path, use.module)
    slots = {}
    for use in iter_param_uses(model):
        slots.setdefault(use.path, (use.owner, use.name, use.param))
    entries = []
    for entry in saved["frozen"]:
        path = _known(entry.get("path") if isinstance(entry, dict) else None, modules, "module")
        if (
            entry.get("mode") not in MODES
            or entry.get("tied") not in TIED_POLICIES
            or not isinstance(entry.get("training"), bool)
        ):
            raise FrozenError(
                f"frozen.load_state: the entry for {path!r} has mode={entry.get('mode')!r}, tied={entry.get('tied')!r}, "
                f"training={entry.get('training')!r}; expected a mode in {MODES}, a policy in {TIED_POLICIES} and a bool. "
                f"Save the state with frozen.state(model) and do not edit it."
            )
        dtype = entry.get("dtype")
        if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise FrozenError(
                f"frozen.load_state: the entry for {path!r} has dtype={dtype!r}; expected the name of a torch "
                f"floating dtype such as 'bfloat16'. Save the state with frozen.state(model) and do not edit it."
            )
        entries.append(
            (modules[path], entry, [slots[_known(p, slots, "parameter")] for p in entry.get("tied_slots", [])])
        )
    frozen_slots = [slots[_known(p, slots, "parameter")] for p in saved["frozen_slots"]]
    user_frozen = [slots[_known(p, slots, "parameter")] for p in saved["user_frozen"]]
    for p in saved["switched_off"]:
        _known(p, slots, "parameter")

    thaw_modules(model, [use.module for use in iter_module_uses(model)])
    for owner, name, _ in [slots[p] for p in slots]:
        if name in frozen_slot_names(owner):
            set_frozen_slot(owner, name, False)
    for module, entry, tied_slots in entries:
        if record_of(module) is None:
            record = mark(module, entry["mode"], entry["tied"])
            record.requested_training = entry["training"]
            record.tied_slots = tuple((owner, name) for owner, name, _ in tied_slots)
    for module, entry, _ in entries:
        if entry.get("dtype") is not None and precision_of(module) is None:
            lower_precision(module, getattr(torch, entry["dtype"]))
    for owner, name, _ in frozen_slots:
        set_frozen_slot(owner, name, True)
    for _, _, param in user_frozen:
        param.requires_grad_(False)
    return settle(model)


def _known(path: object, known: dict[str, Any], kind: str) -> str:
    if path not in known:
        raise UnknownPathError(
            f"frozen.load_state: the saved state names the {kind} path {path!r}, which the model does not "
            f"have; closest existing paths: {closest(str(path), list(known))}. Load the state into a model "
            f"built the same way as the one it was saved from. Nothing was changed."
        )
    return path  # type: ignore[return-value]
