"""Which parameters train in a model: the trainable set every query and settle read."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from torch import nn

from .flips import flipped_of, notice_flips
from .record import switched_off
from .tree import ModuleUse, ParamUse, iter_module_uses, param_uses_of

__all__ = ["claimed_by_other_libraries", "frozen_by_other_libraries", "trainable_ids", "trainable_of"]


def trainable_ids(model: nn.Module, function: str | None = None) -> set[int]:
    """``id()`` of every parameter that trains in ``model`` now (one walk; see :func:`trainable_of`).

    That is the contract's set plus the parameters inside frozen parts whose flag someone else
    turned on (``flips.py``): they get a gradient. ``function`` (a public name such as
    ``"frozen.optim.sync"``): warn, once per flip, about such parameters.
    """
    uses = list(iter_module_uses(model))
    params = list(param_uses_of(uses))
    wanted = trainable_of(params, claimed_by_other_libraries(uses, params))
    flipped = flipped_of(uses, params, wanted)
    if function is not None:
        notice_flips(uses, params, flipped, function)
    return wanted | flipped.keys()


def trainable_of(params: Iterable[ParamUse], claimed: set[int]) -> set[int]:
    """``id()`` of every parameter of the walked parameter uses ``params`` that the contract trains.

    A parameter is trainable when some non-frozen use reaches it and the user has not
    frozen it by hand. A flag the library itself turned off (by ``settle``/``freeze``)
    still counts as "the user wants it trained", unless another library keeps it off
    (``claimed``, see :func:`claimed_by_other_libraries`). Reads only: nothing is written.
    """
    ids: set[int] = set()
    for use in params:
        param = use.param
        if use.frozen:
            continue
        if param.requires_grad or (switched_off(param, use.owner, use.name) and id(param) not in claimed):
            ids.add(id(param))
    return ids


def frozen_by_other_libraries(model: nn.Module) -> set[int]:
    """``id()`` of parameters another library keeps frozen on purpose (see :func:`claimed_by_other_libraries`)."""
    uses = list(iter_module_uses(model))
    return claimed_by_other_libraries(uses, list(param_uses_of(uses)))


def claimed_by_other_libraries(uses: list[ModuleUse], params: list[ParamUse]) -> set[int]:
    """``id()`` of parameters another library keeps frozen on purpose, which thaw must leave off.

    The library cannot see a ``requires_grad=False`` written over its own ``False``, so it
    recognises the libraries that do so. PEFT (LoRA and the other tuners) freezes every
    parameter of the model it tunes except its adapters (named with the tuner's prefix, e.g.
    ``lora_``) and ``modules_to_save``: after ``freeze`` -> ``get_peft_model`` -> ``thaw``,
    those stay frozen. It also switches off the adapters of every adapter that is not active
    (``set_adapter("b")`` turns ``lora_A.a`` off): they stay off too, as they take no part in
    the forward. PEFT is never imported here. Read from an existing walk of the model
    (``uses`` and their ``params``), so asking costs no walk of its own.
    """
    peft_tuners = sys.modules.get("peft.tuners.tuners_utils")
    if peft_tuners is None:
        return set()
    claimed: set[int] = set()
    seen: set[int] = set()
    for use in uses:
        module = use.module
        if not isinstance(module, peft_tuners.BaseTuner) or id(module) in seen:
            continue
        seen.add(id(module))
        prefix = getattr(module, "prefix", "lora_")
        active = _active_adapters(module)
        inside = f"{use.path}." if use.path else ""
        for puse in params:
            if not puse.path.startswith(inside) or puse.param.requires_grad:
                continue
            name = puse.path[len(inside) :]
            if prefix not in name:
                if "modules_to_save" not in name:
                    claimed.add(id(puse.param))
            elif active is not None and (adapter := _adapter_of(name, prefix)) is not None and adapter not in active:
                claimed.add(id(puse.param))
    return claimed


def _active_adapters(tuner: nn.Module) -> set[str] | None:
    """The tuner's active adapters; ``None`` when it cannot say (then no adapter is claimed)."""
    try:
        active: Any = tuner.active_adapters  # a property of PEFT's BaseTuner
    except Exception:
        return None
    return {active} if isinstance(active, str) else set(active)


def _adapter_of(name: str, prefix: str) -> str | None:
    """The adapter a PEFT parameter belongs to: ``...lora_A.<adapter>.weight`` -> ``<adapter>``."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.startswith(prefix):
            return parts[i + 1]
    return None
