"""``freezing()``: freeze every module constructed inside a ``with`` block (contract S7).

How: while at least one block is open in any thread, ``nn.Module.__init__`` is
wrapped so that each module constructed in a thread with an open block is noted
(weakly) in that thread's innermost block. When the block ends, the modules still
alive are frozen in place exactly as :func:`frozen.freeze` would (same record, so
:func:`frozen.thaw` undoes it). When the last block closes, ``nn.Module.__init__`` is
the original function again -- also when the block raised.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ._checks import check_mode
from ._mark import mark, record_of
from ._state import set_switched_off
from ._use import live_plan
from ._wrapper import Frozen

__all__ = ["freezing"]

_local = threading.local()  # .blocks: the open blocks of this thread, innermost last
_lock = threading.Lock()
_open_blocks = 0
_original_init = nn.Module.__init__


def _noting_init(self: nn.Module, *args: object, **kwargs: object) -> None:
    _original_init(self, *args, **kwargs)
    blocks = getattr(_local, "blocks", None)
    if blocks:
        blocks[-1].append(weakref.ref(self))


@contextmanager
def freezing(*, mode: str = "eval") -> Iterator[None]:
    """Freeze every module constructed inside the ``with`` block, and the parameters they hold.

    ``with frozen.freezing(): backbone = Backbone()`` is ``frozen.freeze(backbone)``
    applied at the end of the block to each module constructed in it -- PyTorch's form
    of Keras' ``Dense(..., trainable=False)``. Each such module is marked frozen in
    place (thaw it with :func:`frozen.thaw`), runs in inference behaviour (``mode``),
    and its parameters get ``requires_grad=False``. What holds:

    * Modules constructed outside are untouched, even when placed inside a module built
      in the block (wrap those in :class:`frozen.Frozen` to freeze that use).
    * Lazy parameters (``nn.LazyLinear``) of modules built in the block stay frozen when
      they materialise: they are the same objects.
    * Modules constructed *after* the block -- even by a module built inside it -- are
      not frozen; freeze them with :func:`frozen.freeze`. A parameter registered later
      on a module built in the block is excluded from :func:`frozen.trainable` at once;
      its ``requires_grad`` follows at the next :func:`frozen.settle` (or freeze/thaw).
    * A parameter created outside but held by a module built inside (a tied weight)
      has its flag turned off too; settle the combined model to give it back to the
      outside use that trains it (contract S4).
    * Blocks nest (a module belongs to the innermost block open in its thread); other
      threads are unaffected. An exception inside the block leaves no global change
      behind, and what was built before it is frozen all the same.

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
    _open(noted)
    try:
        yield
    finally:
        _close(noted)
        _freeze_noted(noted, mode)


def _open(noted: list) -> None:
    global _open_blocks
    if not hasattr(_local, "blocks"):
        _local.blocks = []
    _local.blocks.append(noted)
    with _lock:
        _open_blocks += 1
        nn.Module.__init__ = _noting_init  # type: ignore[method-assign]


def _close(noted: list) -> None:
    global _open_blocks
    _local.blocks.remove(noted)
    with _lock:
        _open_blocks -= 1
        if _open_blocks == 0:
            nn.Module.__init__ = _original_init  # type: ignore[method-assign]


def _freeze_noted(noted: list[weakref.ref], mode: str) -> None:
    modules = {id(m): m for ref in noted if (m := ref()) is not None}
    for module in modules.values():
        if isinstance(module, Frozen) or record_of(module) is not None:
            continue  # a wrapper is frozen already; the module it wraps is marked itself
        record = mark(module, mode, "freeze")
        for name, param in module._parameters.items():
            if param is not None and param.requires_grad:
                param.requires_grad = False  # not requires_grad_(): lazy parameters refuse methods
                set_switched_off(module, name, True)
        # The flags agree now, so no per-call detaching is needed: as after settle.
        record.plan = live_plan(module, recurse=False)
