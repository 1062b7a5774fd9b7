"""Records the library keeps on modules, so that every change it makes can be undone.

The records live in each module's ``__dict__`` (never as parameters or buffers), so
they travel with ``copy.deepcopy`` and ``torch.save(model)`` and never appear in a
``state_dict``. Parameters cannot carry them: ``Parameter.__deepcopy__`` drops
Python attributes.
"""

from __future__ import annotations

from torch import nn

__all__ = [
    "SWITCHED_OFF",
    "INPLACE_MARK",
    "is_marked_frozen",
    "switched_off_names",
    "set_switched_off",
    "FROZEN_SLOTS",
    "frozen_slot_names",
    "set_frozen_slot",
]

# On a module that owns parameters: the names in ``module._parameters`` whose
# ``requires_grad`` the library turned off (settle / freeze). A parameter with
# ``requires_grad=False`` that is *not* recorded here was frozen by the user, and
# the library never turns it back on.
SWITCHED_OFF = "_frozen_switched_off"

# On a module frozen in place by ``frozen.freeze``: the record of what freeze changed.
INPLACE_MARK = "_frozen_inplace"


def is_marked_frozen(module: nn.Module) -> bool:
    """Whether ``module`` was frozen in place by :func:`frozen.freeze`."""
    return INPLACE_MARK in module.__dict__


def switched_off_names(owner: nn.Module) -> frozenset[str]:
    """The parameter names of ``owner`` whose flag the library turned off."""
    return owner.__dict__.get(SWITCHED_OFF, frozenset())


def set_switched_off(owner: nn.Module, name: str, off: bool) -> None:
    """Record (or forget) that the library turned off ``owner.<name>.requires_grad``."""
    _set_name(owner, SWITCHED_OFF, name, off)


def _set_name(owner: nn.Module, key: str, name: str, present: bool) -> None:
    """Add ``name`` to (or drop it from) the name set at ``owner.__dict__[key]``; no empty sets."""
    names = set(owner.__dict__.get(key, frozenset()))
    names.add(name) if present else names.discard(name)
    if names:
        owner.__dict__[key] = frozenset(names)
    else:
        owner.__dict__.pop(key, None)


# On a module that owns parameters: the names in ``module._parameters`` frozen at
# this slot although the module itself is not frozen -- ``freeze(..., tied="freeze")``
# freezing a tied parameter at its unselected uses (GPT-2's ``lm_head.weight``).
FROZEN_SLOTS = "_frozen_slots"


def frozen_slot_names(owner: nn.Module) -> frozenset[str]:
    """The parameter names of ``owner`` frozen at this slot by ``tied="freeze"``."""
    return owner.__dict__.get(FROZEN_SLOTS, frozenset())


def set_frozen_slot(owner: nn.Module, name: str, frozen: bool) -> None:
    """Record (or forget) that ``owner.<name>`` does not train through ``owner``."""
    _set_name(owner, FROZEN_SLOTS, name, frozen)
