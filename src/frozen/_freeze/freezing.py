"""``freezing()``: freeze every module created inside a ``with`` block (contract S7).

A module belongs to a block when it is created while the block's frame is on the
creating thread's call stack: in the block's own code, or in anything it calls. That
is exact for threads, asyncio tasks and generators alike — a block suspended at a
``yield`` or an ``await`` is not on the stack of the code that runs meanwhile — which
neither a thread-local nor a context variable gives (a generator shares its caller's
context).

How modules are seen: torch has global hooks for registering parameters, buffers and
submodules, but none for creating a module, and a module without parameters
(``Dropout``) registers nothing. So while at least one block is open,
``nn.Module.__init__`` and ``nn.Module.__setstate__`` (used by ``copy.deepcopy`` and
``torch.load``: a copy made inside the block is created there too) are wrapped by a
thin function that calls whatever was installed *when the first block opened* — a
patch another library made before is kept. When the last block closes, the originals
come back; if another library patched on top of ours meanwhile, ours stays underneath
theirs as a pass-through (removing it would erase their patch) and notes nothing.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from torch import nn

from .._checks import check_mode
from .._core import LOCK, Frozen, is_marked, mark, settle

__all__ = ["freezing"]

_blocks: list[tuple[FrameType, list[weakref.ref]]] = []  # open blocks, innermost last (all threads)
_installed: dict[str, Any] = {}  # method name -> (the function we replaced, our wrapper)


def _note(module: nn.Module) -> None:
    if not _blocks:
        return
    frame: FrameType | None = sys._getframe(2)
    frames = {id(f): noted for f, noted in _blocks}  # later (inner) blocks of one frame win
    while frame is not None:
        noted = frames.get(id(frame))
        if noted is not None:
            noted.append(weakref.ref(module))
            return
        frame = frame.f_back


def _wrap(name: str) -> None:
    previous = getattr(nn.Module, name)

    def noting(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        result = previous(self, *args, **kwargs)
        _note(self)
        return result

    noting.__wrapped__ = previous  # type: ignore[attr-defined]
    _installed[name] = (previous, noting)
    setattr(nn.Module, name, noting)


def _unwrap(name: str) -> None:
    previous, noting = _installed.pop(name)
    if getattr(nn.Module, name) is noting:
        setattr(nn.Module, name, previous)
    # else: someone patched on top of ours; ours stays as a pass-through (no block is open).


@contextmanager
def freezing(*, mode: str = "eval") -> Iterator[None]:
    """Freeze every module created inside the ``with`` block, and the parameters they hold.

    ``with frozen.freezing(): backbone = Backbone()`` is ``frozen.freeze(backbone, "")``
    applied at the end of the block to each module created in it -- PyTorch's form of
    Keras' ``Dense(..., trainable=False)``. Each such module is marked frozen in place
    (thaw it with :func:`frozen.thaw`), runs in inference behaviour (``mode``), and its
    parameters get ``requires_grad=False``. What holds:

    * Modules created outside are untouched, even when placed inside a module built in
      the block (wrap those in :class:`frozen.Frozen` to freeze that use).
    * "Created" includes ``copy.deepcopy`` and ``torch.load`` of a module inside the block.
    * Lazy parameters (``nn.LazyLinear``) of modules built in the block stay frozen when
      they materialise: they are the same objects.
    * Modules created *after* the block are not frozen; freeze them with
      :func:`frozen.freeze`.
    * A parameter created outside but held by a module built inside (a tied weight)
      has its flag turned off too; settle the combined model to give it back to the
      outside use that trains it (contract S4).
    * Blocks nest (a module belongs to the innermost open block whose code created it);
      other threads, asyncio tasks and generators are unaffected. An exception inside
      the block leaves no change to ``nn.Module`` behind, and what was built before it
      is frozen all the same.

    Args:
        mode: ``"eval"`` (default) or ``"inherit"``, as in :func:`frozen.freeze`.

    Raises:
        frozen.InvalidModeError: ``mode`` is not ``"eval"`` or ``"inherit"``.

    Example:
        >>> import torch, frozen
        >>> with frozen.freezing():
        ...     backbone = torch.nn.Linear(2, 2)
        >>> model = torch.nn.Sequential(backbone, torch.nn.Linear(2, 1))
        >>> [name for name, _ in frozen.named_trainable(model)], backbone.weight.requires_grad
        (['1.weight', '1.bias'], False)
    """
    check_mode(mode)
    noted: list[weakref.ref] = []
    frame = sys._getframe(2)  # the frame running the with statement (contextmanager adds one)
    with LOCK:
        if not _blocks:
            _wrap("__init__")
            _wrap("__setstate__")
        _blocks.append((frame, noted))
    try:
        yield
    finally:
        with LOCK:
            del _blocks[next(i for i, (_, n) in enumerate(_blocks) if n is noted)]
            if not _blocks:
                _unwrap("__init__")
                _unwrap("__setstate__")
        _freeze_noted(noted, mode)


def _freeze_noted(noted: list[weakref.ref], mode: str) -> None:
    modules = {id(m): m for ref in noted if (m := ref()) is not None}
    with LOCK:
        for module in modules.values():
            if isinstance(module, Frozen) or is_marked(module):
                continue  # a wrapper is frozen already; the module it wraps is marked itself
            mark(module, mode, "freeze")
        # Settle each outermost built module: its flags agree now, as after freeze().
        inside = {id(c) for m in modules.values() for c in m.modules() if c is not m}
        for module in modules.values():
            if id(module) not in inside:
                settle(module)
