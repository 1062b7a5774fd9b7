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

from .._checks import MODES, TIED_POLICIES, ModelT, check_dtype, check_model
from .._core import LOCK, ModuleUse, View, is_marked, join, record_of, settle_flags
from .._core import switched_off as library_switched_off
from .._errors import FrozenError, UnknownPathError, closest
from .._rows import apply_rows, plan_rows_state, rows_state
from .freeze import FreezePlan, apply_freeze
from .thaw import apply_thaw

__all__ = ["STATE_VERSION", "load_state", "state"]

STATE_VERSION = 2
_KEYS = {"version", "frozen", "frozen_slots", "frozen_params", "rows", "switched_off", "user_frozen"}
_KEYS_V1 = _KEYS - {"frozen_params", "rows"}


def state(model: nn.Module) -> dict[str, Any]:
    """Return the in-place freeze state of ``model`` as a JSON-serialisable dict.

    Keys: ``"version"``; ``"frozen"``: one entry per module frozen in place (by
    :func:`frozen.freeze` or :func:`frozen.freezing`) with its ``path``, ``mode``,
    ``tied`` policy, the ``training`` mode last asked of it, the ``tied_slots``
    (parameter paths frozen at other uses because of it), and for the root of a part
    frozen with ``dtype=`` that type's name (``"dtype": "bfloat16"``); ``"frozen_slots"``: every
    parameter slot frozen on its own (tied, or a selected parameter); ``"frozen_params"``: those
    frozen as selected parameters; ``"rows"``: the frozen rows of partly frozen parameters
    (``{path: {"rows": n, "frozen": [[start, stop], ...]}}``); ``"switched_off"``: the parameter paths whose
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
    view = View(model)
    return {
        "version": STATE_VERSION,
        "frozen": _marked_entries(view),
        **_slot_lists(view),
        "rows": rows_state(view),
    }


def _marked_entries(view: View) -> list[dict[str, Any]]:
    """One entry per module frozen in place, under its first path."""
    first_path = view.first_paths
    entries: list[dict[str, Any]] = []
    for use in view.uses:
        record = record_of(use.module)
        if use.path != first_path[id(use.module)] or record is None or record.mode is None:
            continue
        entry: dict[str, Any] = {
            "path": use.path,
            "mode": record.mode,
            "tied": record.tied,
            "training": record.requested_training,
            "tied_slots": [join(first_path.get(id(owner), "?"), name) for owner, name in record.tied_slots],
        }
        if record.storage is not None:
            entry["dtype"] = str(record.storage.dtype).removeprefix("torch.")  # freeze(..., dtype=) root
        entries.append(entry)
    return entries


def _slot_lists(view: View) -> dict[str, list[str]]:
    """Parameter paths by kind: frozen slots, selected parameters, flags off (by the library, by hand)."""
    first_path = view.first_paths
    lists: dict[str, list[str]] = {k: [] for k in ("frozen_slots", "frozen_params", "switched_off", "user_frozen")}
    seen: set[tuple[int, str]] = set()
    for puse in view.params:
        if first_path[id(puse.owner)] != puse.path.rpartition(".")[0] or (id(puse.owner), puse.name) in seen:
            continue  # one entry per slot, under the owner's first path
        seen.add((id(puse.owner), puse.name))
        record = record_of(puse.owner)
        if record is not None and puse.name in record.frozen_slots:
            lists["frozen_slots"].append(puse.path)
            if record.frozen_slots[puse.name] == "selected":
                lists["frozen_params"].append(puse.path)
        if library_switched_off(puse.param, puse.owner, puse.name):
            lists["switched_off"].append(puse.path)
        elif not puse.param.requires_grad:
            lists["user_frozen"].append(puse.path)
    return lists


def load_state(model: ModelT, saved: dict[str, Any]) -> ModelT:
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
    with LOCK:
        view = View(model)
        plans, user_frozen = _validate(view, saved)
        rows = plan_rows_state(view, saved.get("rows", {}))  # version 1 had no rows
        apply_thaw(view, [u.module for u in view.uses if is_marked(u.module)], _all_slots(view))
        for plan in plans:
            apply_freeze(plan)
        apply_rows(rows)
        settle_flags(model, user_frozen=user_frozen, view=view, function="frozen.load_state")
    return model


def _all_slots(view: View) -> list[tuple[nn.Module, str]]:
    return [
        (u.owner, u.name) for u in view.params if (r := record_of(u.owner)) is not None and u.name in r.frozen_slots
    ]


def _validate(view: View, saved: object) -> tuple[list[FreezePlan], list[nn.Parameter]]:
    """Check every field of ``saved`` against ``model``; return the plans and user-frozen parameters."""
    if not isinstance(saved, dict):
        raise TypeError(
            f"frozen.load_state(model, saved): expected the dict frozen.state(model) returned, "
            f"received {type(saved).__name__}."
        )
    if (set(saved), saved.get("version")) not in ((_KEYS, STATE_VERSION), (_KEYS_V1, 1)):
        raise FrozenError(
            f"frozen.load_state(model, saved): expected a dict with keys {sorted(_KEYS)} and version "
            f"{STATE_VERSION} (or 1), as frozen.state(model) returns, received keys {sorted(saved)} "
            f"(version {saved.get('version')!r}). Save the state with frozen.state(model)."
        )
    modules: dict[str, nn.Module] = {}
    for use in view.uses:
        modules.setdefault(use.path, use.module)
    slots: dict[str, tuple[nn.Module, str, nn.Parameter]] = {}
    for puse in view.params:
        slots.setdefault(puse.path, (puse.owner, puse.name, puse.param))
    plans = []
    for entry in _list(saved, "frozen"):
        path = _known(entry.get("path") if isinstance(entry, dict) else None, modules, "module")
        plans.append(_entry_plan(entry, path, modules[path], slots))
    selected = set(_list(saved, "frozen_params")) if "frozen_params" in saved else set()
    for path in _list(saved, "frozen_slots"):
        owner, name, _ = slots[_known(path, slots, "parameter")]
        why = "selected" if path in selected else "tied"
        plans.append(FreezePlan(mode="eval", tied="freeze", slots=[(owner, name, why, None)]))
    for path in _list(saved, "switched_off"):
        _known(path, slots, "parameter")
    user = [slots[_known(p, slots, "parameter")][2] for p in _list(saved, "user_frozen")]
    return plans, user


def _entry_plan(entry: dict, path: str, module: nn.Module, slots: dict) -> FreezePlan:
    mode, tied, training = entry.get("mode"), entry.get("tied"), entry.get("training")
    if mode not in MODES or tied not in TIED_POLICIES or not isinstance(training, bool):
        raise FrozenError(
            _edited(
                f"entry for {path!r}",
                f"mode={mode!r}, tied={tied!r}, training={training!r}",
                f"a mode in {MODES}, a policy in {TIED_POLICIES} and a bool",
            )
        )
    dtype = None
    if entry.get("dtype") is not None:
        dtype = getattr(torch, str(entry["dtype"]), None)
        try:
            check_dtype(dtype if isinstance(dtype, torch.dtype) else None, "dtype")
        except (TypeError, FrozenError):
            dtype = None
        if dtype is None:
            raise FrozenError(
                _edited(
                    f"entry for {path!r}", f"dtype={entry['dtype']!r}", "'bfloat16', 'float16', 'float32' or 'float64'"
                )
            )
    if not isinstance(entry.get("tied_slots", []), list):
        raise FrozenError(_edited(f"entry for {path!r}", f"tied_slots={entry.get('tied_slots')!r}", "a list of paths"))
    tied_slots = [slots[_known(p, slots, "parameter")] for p in entry.get("tied_slots", [])]
    plan = FreezePlan(mode=mode, tied=tied, dtype=dtype, requested_training=training)
    plan.marks = [ModuleUse(path, module, False, None)]
    plan.slots = [(owner, name, "tied", module) for owner, name, _ in tied_slots]
    plan.low_roots = [module] if dtype is not None else []
    return plan


def _list(saved: dict, key: str) -> list:
    value = saved[key]
    if not isinstance(value, list):
        raise FrozenError(_edited(repr(key), value, "a list"))
    return value


def _edited(where: str, received: object, expected: str) -> str:
    return (
        f"frozen.load_state: the saved state's {where} has {received!r}; expected {expected}. "
        f"Save the state with frozen.state(model) and do not edit it. Nothing was changed."
    )


def _known(path: object, known: dict[str, Any], kind: str) -> str:
    if not isinstance(path, str) or path not in known:
        raise UnknownPathError(
            f"frozen.load_state: the saved state names the {kind} path {path!r}, which the model does not "
            f"have; closest existing paths: {closest(str(path), list(known))}. Load the state into a model "
            f"built the same way as the one it was saved from. Nothing was changed."
        )
    return path
