"""Flags flipped outside ``frozen``: a parameter inside a frozen part that requires grad again.

``settle`` is the only writer of ``requires_grad`` in the library: it turns off the flag of every
parameter reached only through frozen uses. Anyone else can still write it: the user's code
(``model[0].weight.requires_grad_(True)``), PEFT's ``set_adapter`` / ``enable_adapter_layers``
(they switch on every LoRA flag of the active adapter, inside frozen parts too), another
library. A settled frozen use detaches only the parameters that train through another use, so
such a parameter gets a gradient. The policy (docs/freeze.md, "Flags flipped outside frozen"):

* answers tell the truth: ``trainable``, ``is_frozen``, ``report``, ``explain``, ``grad`` and
  ``frozen.optim`` count it as training, because it does;
* the first call that sees the flip warns (:class:`~frozen.ForeignFlagWarning`) naming the
  parameter, who likely flipped it and the two fixes; later calls stay quiet until it flips again;
* ``settle`` (and ``freeze``, ``thaw``, ``load_state`` and a ``FreezeCallback`` step, which
  settle) turns the flag off again, and warns when no earlier call had told of that flip.

Which flips were told is kept per parameter object, weakly, like Python's own warning
registry; it is not part of the freeze record, which queries never write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .._errors import ForeignFlagWarning, warn_outside
from .record import record_of
from .tree import ModuleUse, ParamUse

__all__ = ["flipped_of", "forget_flips", "notice_flips", "who_flipped"]

_TOLD: WeakIdKeyDictionary = WeakIdKeyDictionary()  # parameters whose current flip a warning named
_SHOWN = 8  # paths named in one warning; the rest are counted


def flipped_of(uses: list[ModuleUse], params: Iterable[ParamUse], wanted: set[int]) -> dict[int, ParamUse]:
    """``id()`` -> first use of each parameter outside ``wanted`` that requires grad and gets a gradient.

    ``wanted`` is the contract's trainable set: a parameter outside it that requires grad is
    reached only through frozen uses. It gets a gradient through a frozen use that ``settle``
    planned (a ``Frozen`` wrapper's plan, the guard at the root of a part frozen in place)
    and that does not detach it: a plan detaches only the parameters that train elsewhere.
    A use no settle planned yet (a part marked a moment ago, a wrapper never settled) is not a
    flip: it is what settling is for. Reads only; looks at the plans only when some parameter
    outside ``wanted`` requires grad, which a settled model has none of.
    """
    planned: dict[tuple[int, str], tuple[Any, bool]] | None = None
    found: dict[int, ParamUse] = {}
    for use in params:
        param = use.param
        key = id(param)
        if not param.requires_grad or key in wanted or key in found:
            continue
        planned = _planned_slots(uses) if planned is None else planned
        held, detached = planned.get((id(use.owner._parameters), use.name), (None, True))
        if held is param and not detached:
            found[key] = use
    return found


def _planned_slots(uses: list[ModuleUse]) -> dict[tuple[int, str], tuple[Any, bool]]:
    """Every parameter slot a settled frozen use covers -> (the parameter it was settled with, detached)."""
    planned: dict[tuple[int, str], tuple[Any, bool]] = {}
    for use in uses:
        record = record_of(use.module)
        sources = [getattr(use.wrapper, "_plan", None), None if record is None else record.guard]
        for source in sources:
            if source is None:
                continue
            for index, (owner, name, param) in enumerate(source.slots):
                _, before = planned.get((id(owner), name), (None, False))
                # Detached by any use covering it: an outer one's detached alias is detached again inside.
                planned[(id(owner), name)] = (param, before or index in source.detach)
    return planned


def who_flipped(use: ParamUse, modules: dict[str, nn.Module]) -> str:
    """``"PEFT"`` when the parameter lives in a PEFT adapter or tuner layer, else ``""`` (unknown)."""
    if "lora_" in use.path:
        return "PEFT"
    parts = use.path.split(".")[:-1]
    for i in range(len(parts) + 1):
        module = modules.get(".".join(parts[:i]))
        if module is not None and type(module).__module__.startswith("peft."):
            return "PEFT"
    return ""


def notice_flips(uses: list[ModuleUse], params: list[ParamUse], flipped: dict[int, ParamUse], function: str) -> None:
    """Warn once per flip about the ``flipped`` parameters that no earlier warning named.

    A parameter told about and no longer flipped (settled, thawed, switched off again) is
    forgotten, so a later flip of it warns again.
    """
    if _TOLD:
        for use in params:
            if id(use.param) not in flipped and use.param in _TOLD:
                del _TOLD[use.param]
    fresh = [use for use in flipped.values() if use.param not in _TOLD]
    for use in fresh:
        _TOLD[use.param] = True
    if fresh:
        _warn(fresh, uses, function, restored=False)


def forget_flips(uses: list[ModuleUse], restored: dict[int, ParamUse], function: str) -> None:
    """``settle`` turned the ``restored`` flags off again: say so for flips no earlier warning named."""
    untold = [use for use in restored.values() if _TOLD.pop(use.param, None) is None]
    if untold:
        _warn(untold, uses, function, restored=True)


def _warn(flipped: list[ParamUse], uses: list[ModuleUse], function: str, *, restored: bool) -> None:
    """One warning per likely flipper, naming the parameters, the flipper and both fixes."""
    modules = {use.path: use.module for use in uses}
    by_who: dict[str, list[ParamUse]] = {}
    for use in flipped:
        by_who.setdefault(who_flipped(use, modules), []).append(use)
    for who, group in by_who.items():
        likely = (
            "PEFT (set_adapter / enable_adapter_layers switch on every adapter flag of the active adapter, "
            "inside frozen parts too)"
            if who
            else "your code or another library (p.requires_grad_(True), module.requires_grad_())"
        )
        paths = _listing([use.path for use in group])
        accept = _accept(group, {use.path: use for use in uses})
        if restored:
            message = (
                f"{function}: set requires_grad=False again on {len(group)} parameter(s) reached only through "
                f"frozen parts, whose flag was switched on outside frozen, likely by {likely}: {paths}. They had "
                f"been getting gradients. Settling makes every flag agree with what is frozen: a flag switched "
                f"on outside frozen does not undo a freeze. To keep them training instead, {accept}."
            )
        else:
            message = (
                f"{function}: {len(group)} parameter(s) reached only through frozen parts have requires_grad=True, "
                f"switched on outside frozen, likely by {likely}: {paths}. No frozen use detaches them, so they get "
                f"gradients, and frozen.trainable, is_frozen, report and frozen.optim count them as trainable. "
                f"Either re-freeze them: frozen.settle(model) turns the flags off again (so do the next "
                f"frozen.freeze, thaw, load_state and a FreezeCallback step); or keep them training: {accept}."
            )
        warn_outside(message, ForeignFlagWarning)


def _accept(group: list[ParamUse], by_path: dict[str, ModuleUse]) -> str:
    """The call that makes the flips part of the contract: thaw what holds each parameter."""
    targets: list[str] = []
    wrappers: list[str] = []
    for use in group:
        owner_path = use.path.rpartition(".")[0]
        owner = by_path.get(owner_path)
        record = record_of(use.owner)
        if record is not None and use.name in record.frozen_slots and not (owner is not None and owner.frozen):
            targets.append(use.path)  # frozen on its own (a selected parameter, a tied slot)
        elif owner is not None and owner.wrapped is not None and (record is None or record.mode is None):
            wrappers.append(owner_path)  # inside a Frozen wrapper, which thaw does not undo
        else:
            targets.append(owner_path)
    steps = []
    if targets:
        listed = ", ".join(repr(t) for t in dict.fromkeys(targets))
        steps.append(f"frozen.thaw(model, {listed}) (thaws each whole module)")
    if wrappers:
        steps.append(f"replace the frozen.Frozen wrapper above {_listing(wrappers)} by its .module")
    return " and ".join(steps) + ", then frozen.optim.sync(optimizer, model)"


def _listing(paths: list[str]) -> str:
    unique = list(dict.fromkeys(paths))
    shown = ", ".join(repr(p) for p in unique[:_SHOWN])
    return shown + (f" and {len(unique) - _SHOWN} more" if len(unique) > _SHOWN else "")
