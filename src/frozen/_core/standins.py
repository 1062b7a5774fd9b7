"""Stand-ins: what ``frozen`` puts in a module's ``__dict__`` in place of ``forward``, ``train``, ``_apply``.

An instance attribute shadows the class's method at no cost per call (``nn.Module.__call__``
keeps its fast path, unlike a hook), so the library changes behaviour there: the white-box
guard and a cached part or lean convolution for ``forward``, the eval stand-in for
``train``, the storage keeper of a low-precision part for ``_apply``. This module is the
only code that writes or removes those attributes, and the record (``_frozen``) beside them.

One chaining rule. Each attribute has a fixed order of layers, outermost first
(:data:`LAYERS`): for ``forward``, a cached part, then a lean convolution, then the
white-box guard, then whatever instance ``forward`` the module had of its own (Accelerate's
hooks set one), then the class's. Every stand-in keeps what stands behind it in
``previous`` (``None``: the class's method) and calls it to pass a call on, so installing
or removing one layer keeps the others where they are, whatever the order in which they
came. Something else that put itself in front of a stand-in later holds it as its own
``previous``: that stand-in cannot be unlinked, so removing it turns it into a
:class:`Passthrough`.

One copy rule (``copy.deepcopy``, pickle, ``torch.save``). A stand-in refers to its module
through a :class:`ModuleRef` (weak: it lives in that module's ``__dict__``), which a copy
rebuilds for the copied module, and it pickles what it was built from (``__getstate__``
drops what belongs to this process). So a copy's stand-ins serve the copy -- except one
that serves the original only (``serves_copies = False``: a cached part, whose store is
the original's), which a copy gets as a :class:`Passthrough` to the layer behind it.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

__all__ = [
    "LAYERS",
    "RECORD",
    "ModuleRef",
    "Passthrough",
    "StandIn",
    "attach_record",
    "detach_record",
    "find",
    "install",
    "own_attribute",
    "remove",
    "standing",
]

# Per attribute, the layers of stand-ins from the outermost in.
LAYERS: dict[str, tuple[str, ...]] = {
    "forward": ("cache", "lean", "guard"),
    "train": ("eval",),
    "_apply": ("storage",),
}
RECORD = "_frozen"  # the key of the module's record (record.py)


class ModuleRef:
    """A weak reference to the module a stand-in sits on, that copies and pickles as the module.

    Stand-ins live in their module's ``__dict__``; holding the module strongly made every
    frozen module a reference cycle, freed only when Python's cycle collector ran -- a
    deleted model's frozen weights stayed allocated (on the card) until then, while a model
    frozen by hand was freed at once. ``deepcopy`` and pickle rebuild the reference to the
    copied module (``__reduce__``), so a copy's stand-ins serve the copy.
    """

    __slots__ = ("_ref",)

    def __init__(self, module: nn.Module | None) -> None:
        self._ref = weakref.ref(module) if module is not None else None

    def __call__(self) -> Any:
        return self._ref() if self._ref is not None else None

    def __reduce__(self) -> tuple:
        return (ModuleRef, (self(),))


class StandIn:
    """The base of every stand-in: its module (weakly), its place in the chain, what stood there before.

    Subclasses set ``attr`` (the attribute it stands in for) and ``layer`` (one of
    ``LAYERS[attr]``), and pass calls on with :meth:`call_previous`.
    """

    attr = "forward"
    layer = "guard"
    serves_copies = True  # False: a copy gets a Passthrough instead (see the module's docstring)

    def __init__(self, module: nn.Module) -> None:
        self.module_ref = ModuleRef(module)
        self.previous: Any = None  # set by install(): the next layer in, or the module's own attribute

    @property
    def module(self) -> Any:
        return self.module_ref()

    def call_previous(self, *args: Any, **kwargs: Any) -> Any:
        """Call what stands behind this stand-in: the next layer, or at the end the class's method."""
        previous = self.previous
        if previous is not None:
            return previous(*args, **kwargs)
        module = self.module_ref()
        return getattr(type(module), self.attr)(module, *args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self.serves_copies:
            return super().__reduce_ex__(protocol)  # the class and __getstate__: rebuilt for the copy
        return (Passthrough, (self.module, self.previous, self.attr, self.layer))


class Passthrough(StandIn):
    """A stand-in that only calls the layer behind it: a copy's cached part, or one removed from behind another.

    It keeps the place of the stand-in it replaces (its ``attr`` and ``layer``). Any later
    install or remove on that attribute unlinks it.
    """

    def __init__(self, module: nn.Module, previous: Any = None, attr: str = "forward", layer: str = "cache") -> None:
        super().__init__(module)
        self.previous, self.attr, self.layer = previous, attr, layer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call_previous(*args, **kwargs)


def _rank(standin: StandIn) -> int:
    return LAYERS[standin.attr].index(standin.layer)


def _walk(module: nn.Module, attr: str) -> list[StandIn]:
    """The stand-ins reachable from the module's attribute, outermost first, with pass-throughs unlinked."""
    chain: list[StandIn] = []
    holder: StandIn | None = None
    current = module.__dict__.get(attr)
    while isinstance(current, StandIn):
        if type(current) is Passthrough:
            _link(module, attr, holder, current.previous)  # it only passes calls on: nothing to keep
        else:
            chain.append(current)
            holder = current
        current = current.previous
    return chain


def _link(module: nn.Module, attr: str, holder: StandIn | None, value: Any) -> None:
    """Make ``value`` what stands behind ``holder`` (``None``: the module's attribute itself)."""
    if holder is not None:
        holder.previous = value
    elif value is None:
        module.__dict__.pop(attr, None)
    else:
        module.__dict__[attr] = value


def standing(module: nn.Module, attr: str) -> list[StandIn]:
    """The stand-ins for ``module.<attr>``, outermost first (those behind something foreign are not seen)."""
    chain: list[StandIn] = []
    current = module.__dict__.get(attr)
    while isinstance(current, StandIn):
        if type(current) is not Passthrough:
            chain.append(current)
        current = current.previous
    return chain


def own_attribute(module: nn.Module, attr: str) -> Any:
    """What stands behind frozen's stand-ins (or in front of them): the module's own attribute, ``None`` if none."""
    current = module.__dict__.get(attr)
    while isinstance(current, StandIn):
        current = current.previous
    return current


def find(module: nn.Module, attr: str, kind: type) -> Any:
    """The first stand-in of type ``kind`` for ``module.<attr>``, or ``None``."""
    return next((s for s in standing(module, attr) if isinstance(s, kind)), None)


def install(module: nn.Module, standin: StandIn) -> None:
    """Put ``standin`` at its layer of ``module.<standin.attr>``, behind the outer layers and in front of the rest.

    Something foreign (not a stand-in) ends the walk: a new stand-in goes in front of it.
    """
    attr = standin.attr
    rank = _rank(standin)
    holder: StandIn | None = None
    for current in _walk(module, attr):
        if _rank(current) >= rank:
            break
        holder = current
    standin.previous = module.__dict__.get(attr) if holder is None else holder.previous
    _link(module, attr, holder, standin)


def remove(module: nn.Module, standin: StandIn) -> None:
    """Take ``standin`` out of ``module.<standin.attr>``'s chain; the layers around it close up.

    When something foreign stands in front of it (and so calls it), it cannot be unlinked:
    it becomes a :class:`Passthrough` to its ``previous`` in place, keeping nothing else.
    """
    attr = standin.attr
    holder: StandIn | None = None
    for current in _walk(module, attr):
        if current is standin:
            _link(module, attr, holder, standin.previous)
            return
        holder = current
    if type(standin) is not Passthrough:
        kept = {"module_ref": standin.module_ref, "previous": standin.previous, "attr": attr, "layer": standin.layer}
        standin.__dict__.clear()
        standin.__dict__.update(kept)
        object.__setattr__(standin, "__class__", Passthrough)  # the same object, so whoever holds it still works


def attach_record(module: nn.Module, record: Any) -> None:
    """Put ``module``'s record in its ``__dict__`` (record.py is its only writer)."""
    module.__dict__[RECORD] = record


def detach_record(module: nn.Module) -> None:
    """Take ``module``'s record out of its ``__dict__``: nothing of the library's is left there."""
    module.__dict__.pop(RECORD, None)
