"""A cached part's snapshot, compared at every call in a few C-level passes (no Python loop per tensor).

A part's stored outputs are valid while its parameters and buffers hold the values they
were computed from and its modules behave the same. The snapshot records, for the part's
module tree: the modules (weakly), each one's children and ``training`` flag, and for every
parameter and buffer the object and its storage object (weakly: nothing is kept alive, so
``model.cpu()`` still frees the card), its ``_version`` and ``requires_grad``. Storage
objects, not data pointers: ``Module._apply`` (``.to()``, ``.half()``) replaces
``param.data`` without bumping ``_version``, and the allocator often gives the new storage
the address the old one freed (``_core/snapshot.py``).

Each comparison is a ``map`` of a C-level getter over a list recorded once (the modules'
own ``_parameters`` / ``_buffers`` dicts, read afresh at every call, so a replaced buffer is
seen), measured ~4x cheaper than walking the tree in Python. Two changes no tensor shows
are caught elsewhere: a load that preserves version counters (FSDP2) through load hooks,
and a fused optimizer step (``fused=True`` kernels do not bump ``_version``) through a
global optimizer step hook (``hooks.watch_steps``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from functools import partial
from itertools import chain
from operator import attrgetter, call, is_, is_not
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_globals

__all__ = ["PartWatch"]

_VERSION = attrgetter("_version")
_GRAD = attrgetter("requires_grad")
_TRAINING = attrgetter("training")
_MODULES = attrgetter("_modules")
_STORAGE = torch.Tensor.untyped_storage
_PRESENT = partial(is_not, None)
_REGISTERED = [0]  # modules assigned as children anywhere since the hook below was installed
_HOOKED: list[Any] = []  # the global registration hook, installed at the first snapshot


def _registered(_module: nn.Module, _name: str, _child: Any) -> None:
    _REGISTERED[0] += 1


def _watch_registrations() -> None:
    """Count every child module assignment (``model[0][1] = new``): a tree is compared child by child only then."""
    if not _HOOKED:
        _HOOKED.append(module_globals.register_module_module_registration_hook(_registered))


def _dead() -> None:
    return None


def _storage_ref(tensor: torch.Tensor) -> Any:
    try:
        return weakref.ref(tensor.untyped_storage())
    except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses without a storage
        return _dead


def _tensors(dicts: list[dict[str, Any]], extra: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    found = list(filter(_PRESENT, chain.from_iterable(map(dict.values, dicts))))
    return [*found, *extra] if extra else found


def _children(modules: list[nn.Module]) -> list[tuple]:
    return list(map(tuple, map(dict.values, map(_MODULES, modules))))


def _counts(modules: list[nn.Module]) -> list[int]:
    return list(map(len, map(_MODULES, modules)))


class PartWatch:
    """The part's module tree and tensors at one moment (see the module docstring)."""

    __slots__ = ("children", "counts", "dicts", "grads", "refs", "registered", "storages", "tensors", "training",
                 "versions")  # fmt: skip

    def __init__(self, roots: nn.Module | list[nn.Module], extra: Sequence[torch.Tensor] = ()) -> None:
        # a part's module, or the siblings of a run (run.py), each with its whole tree
        modules = [m for root in ([roots] if isinstance(roots, nn.Module) else roots) for m in root.modules()]
        # Weak: the snapshot lives in a stand-in on the root module (a cached part), and a strong
        # reference back to the root would keep the whole part in a reference cycle.
        self.refs = [weakref.ref(m) for m in modules]
        _watch_registrations()
        self.children, self.counts, self.registered = _children(modules), _counts(modules), _REGISTERED[0]
        self.training = list(map(_TRAINING, modules))
        # the modules' own dicts: no reference to a module, and a replaced buffer is seen
        self.dicts = [d for m in modules for d in (m._parameters, m._buffers)]
        tensors = _tensors(self.dicts, extra)
        self.tensors = [weakref.ref(t) for t in tensors]
        self.storages = [_storage_ref(t) for t in tensors]
        self.versions = [None if t.is_inference() else t._version for t in tensors]
        self.grads = list(map(_GRAD, tensors))

    def live(self) -> list[nn.Module] | None:
        """The recorded tree's modules, root first; ``None`` once one of them is gone."""
        modules = [ref() for ref in self.refs]
        return None if any(m is None for m in modules) else modules  # type: ignore[return-value]

    def matches(self, module: nn.Module, extra: Sequence[torch.Tensor], live: list[nn.Module] | None) -> bool:
        """Whether ``module`` is the recorded tree with the same flags, and its tensors are unchanged."""
        if live is None or live[0] is not module:
            return False
        if list(map(_TRAINING, live)) != self.training or _counts(live) != self.counts:
            return False
        # A child replaced by assignment fires the registration hook: only then is each child compared
        # (a removed or inserted one changes a count above).
        if _REGISTERED[0] != self.registered:
            if _children(live) != self.children:
                return False
            self.registered = _REGISTERED[0]
        tensors = _tensors(self.dicts, extra)
        if len(tensors) != len(self.tensors) or not all(map(is_, map(call, self.tensors), tensors)):
            return False
        try:
            versions = list(map(_VERSION, tensors))
        except RuntimeError:  # an inference tensor: no version counter, so never taken as unchanged
            return False
        if versions != self.versions or list(map(_GRAD, tensors)) != self.grads:
            return False
        try:
            return all(map(is_, map(call, self.storages), map(_STORAGE, tensors)))
        except (RuntimeError, NotImplementedError, TypeError):
            return False
