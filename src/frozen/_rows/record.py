"""The row record: which rows of a parameter are frozen, kept in the record of every module holding it.

A row-frozen parameter stays one ``Parameter`` with ``requires_grad=True`` (it trains, in
its other rows; ``state_dict`` keys do not change). Its :class:`FrozenRows` lives in the
``Record`` of each module whose slot holds it (``_core``'s ``rows_of`` / ``set_rows``), one
object shared by every slot of a tied parameter, and this module is its only writer. Living
in the module's record, it travels with the model: ``copy.deepcopy``, pickle and
``torch.load`` rebuild it on the copy's parameter (:meth:`FrozenRows.__reduce__`), so a copy
trains with its rows frozen from its first step, and no query has to restore anything.

What the record drives: a gradient hook zeroing the frozen rows of every incoming gradient
(held by its ``RemovableHandle``), the optimizer step narrowing (``step.py``, which indexes
the records by parameter), and a forward pre-hook on each holding module (:func:`watch_slots`)
that notices a parameter *replaced* in the slot since; a module replaced in its parent's slot
hands its rows on to the new one (``carry.py``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._core import LOCK, View, rows_of, set_rows
from .._errors import FrozenError
from ..distributed import manages_parameter
from .carry import watch_replacements
from .step import Layout, index_rows, indexed_rows

__all__ = ["FrozenRows", "frozen_rows_in", "refuse_sharded", "refuse_replaced", "watch_slots", "write_rows"]


class ZeroRows:
    """The gradient hook of a row-frozen parameter: the incoming gradient with its frozen rows zeroed.

    Out of place: the incoming gradient may be shared with other autograd buffers. The index
    follows the gradient's device, as ``model.to(device)`` keeps the ``Parameter`` object. It
    holds no reference to the parameter (the parameter holds it).
    """

    def __init__(self, frozen: torch.Tensor, n: int, every: bool) -> None:
        self.frozen, self.n, self.every = frozen, n, every

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if grad.shape[0] != self.n:
            # Resized in place since, and no forward of its module followed (a functional use):
            # the frozen rows that still exist stay zero, added rows train; the step follows.
            frozen = self.frozen[self.frozen < grad.shape[0]]
            return grad.index_fill(0, frozen.to(grad.device), 0)
        return torch.zeros_like(grad) if self.every else grad.index_fill(0, self.frozen.to(grad.device), 0)


def _gone() -> None:
    return None


class FrozenRows:
    """The frozen rows of one parameter (see the module docstring).

    Immutable, but for its hook handle and :meth:`follow_resize`: a parameter resized in place
    (``resize_token_embeddings`` keeps the ``Parameter`` and swaps its ``.data``) is still the
    same parameter in every slot, so its one record follows it there.

    Attributes:
        path: the parameter's first path where its rows were frozen (for messages).
        mask: bool, one entry per row, True = frozen.
        frozen: sorted int64 indices of the frozen rows.
        layout: the trainable rows, as optimizer steps see them.
        handle: the gradient hook's handle, ``None`` while the parameter needs no gradient
            (frozen whole): a hook cannot be put on it then; ``settle`` attaches it on thaw.
    """

    def __init__(self, param: nn.Parameter | None, path: str, mask: torch.Tensor) -> None:
        self.path, self.mask = path, mask
        self.frozen = mask.nonzero().flatten()
        self.layout = Layout.of(mask)
        # Weak: the record sits in the module that holds the parameter; a parameter replaced in
        # the slot since must not be kept alive by it.
        self._param: Callable[[], nn.Parameter | None] = weakref.ref(param) if param is not None else _gone
        self.handle: RemovableHandle | None = None

    @property
    def param(self) -> nn.Parameter | None:
        """The parameter these rows were frozen on (``None`` once it is freed)."""
        return self._param()

    @property
    def trainable(self) -> torch.Tensor:
        """Sorted int64 indices of the rows that train."""
        return self.layout.trainable

    def attach(self, param: torch.Tensor) -> None:
        """Put the gradient hook on ``param`` if it is this record's parameter, needs a gradient and has none."""
        if self.handle is None and param is self.param and param.requires_grad:
            self.handle = param.register_hook(ZeroRows(self.frozen, len(self.mask), bool(self.mask.all())))

    def fitted(self, n: int, function: str, *, strict: bool = True) -> torch.Tensor:
        """The frozen-rows mask for ``n`` rows, the parameter's count now (it may have been resized since).

        Rows a resize added at the end train (the rule of ``docs/rows.md``); rows it cut are
        gone. Cutting a frozen row is refused (``strict``), since the rows that stay would no
        longer be the ones that were frozen by the user's count; a thaw (not strict) may cut.

        Raises:
            frozen.FrozenError: ``strict`` and the resize cut frozen rows.
        """
        old = len(self.mask)
        if n >= old:
            return torch.cat([self.mask, torch.zeros(n - old, dtype=torch.bool)]) if n > old else self.mask.clone()
        cut = self.mask[n:].nonzero().flatten() + n
        if strict and cut.numel():
            shown = cut.tolist()[:8]
            raise FrozenError(
                f"{function}: the parameter at {self.path!r} was resized from {old} to {n} rows (e.g. by "
                f"resize_token_embeddings), which cuts its frozen rows {shown}{' ...' if cut.numel() > 8 else ''}. "
                f"Expected a row count that keeps every frozen row (at least {int(cut[-1]) + 1}). Resize to at "
                f"least that many rows, or thaw the rows first (frozen.thaw(model, {self.path!r})) and freeze the "
                f"ones you want again with frozen.freeze(model, frozen.Rows({self.path!r}, ...))."
            )
        return self.mask[:n].clone()

    def resized(self, n: int, function: str) -> FrozenRows:
        """This record as it holds for ``n`` rows, for questions: a detached copy (no hook, not indexed)."""
        return self if n == len(self.mask) else FrozenRows(self.param, self.path, self.fitted(n, function))

    def follow_resize(self, param: nn.Parameter, function: str) -> None:
        """Make this record hold for ``param``'s row count now: new rows train, optimizer state follows.

        Called by the first forward of a module holding the parameter (:func:`watch_slots`)
        or the first optimizer step after the resize, whichever comes first.

        Raises:
            frozen.FrozenError: the resize cut frozen rows (:meth:`fitted`); nothing changes then.
        """
        with LOCK:
            if param is not self.param or param.shape[0] == len(self.mask):
                return
            mask = self.fitted(param.shape[0], function)
            old = self.layout
            self.release()  # its hook zeroes the old rows
            self.mask, self.frozen, self.layout = mask, mask.nonzero().flatten(), Layout.of(mask)
            index_rows(param, self, old=old)  # optimizer state built for the old rows: widened to the new count
            self.attach(param)

    def release(self) -> None:
        """Remove the gradient hook (the rows are thawed or frozen anew)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def __reduce__(self) -> tuple:
        # deepcopy, pickle and torch.load pass the copy's parameter (their memo maps it): the
        # copy gets its own gradient hook and optimizer index, the original keeps its own.
        return (_rebuilt, (self.param, self.path, self.mask))


def _rebuilt(param: nn.Parameter | None, path: str, mask: torch.Tensor) -> FrozenRows:
    rows = FrozenRows(param, path, mask)
    if param is not None:
        _activate(param, rows)
    return rows


def _activate(param: nn.Parameter, rows: FrozenRows | None) -> None:
    """Index ``rows`` for optimizer steps (relayouts their state) and give ``param`` its gradient hook."""
    index_rows(param, rows)
    if rows is not None:
        rows.attach(param)
        watch_replacements(write_rows)  # a module replaced in its slot hands its rows on (carry.py)


def write_rows(param: nn.Parameter, path: str, slots: list[tuple[nn.Module, str]], mask: torch.Tensor) -> None:
    """Make ``mask`` the frozen rows of ``param`` at every one of its ``slots`` (no True: thaw them all).

    The only writer of row records: the old record's hook leaves with its handle, the new
    record goes into each slot's module record, the optimizer index and the gradient hook.
    """
    olds = {id(r): r for owner, name in slots if (r := rows_of(owner).get(name)) is not None}
    for old in olds.values():
        if old.param is param:
            old.release()
    rows = FrozenRows(param, path, mask) if bool(mask.any()) else None
    for owner, name in slots:
        set_rows(owner, name, rows, watch_slots)
    _activate(param, rows)


def refuse_sharded(param: torch.Tensor, path: str, function: str, *, managed: bool = False) -> None:
    """Refuse a DTensor (an FSDP2 shard holds other rows than the whole) or a parameter FSDP2 ``managed``.

    Row freezing narrows the whole tensor at each optimizer step; FSDP2's optimizer holds shards.
    """
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    if managed or isinstance(param, DTensor):
        raise FrozenError(
            f"{function}: the parameter at {path!r} is managed by FSDP2's fully_shard (sharded); row freezing "
            f"needs the whole tensor on every rank. Expected a plain parameter: freeze the whole parameter under "
            f"FSDP2, or train with DDP (frozen.distributed.wrap), where row freezing works. Nothing was changed."
        )


def refuse_replaced(module: nn.Module, name: str, rows: FrozenRows, param: torch.Tensor, function: str) -> None:
    """Refuse a parameter put in a row-frozen slot since that cannot take the same rows."""
    if param.dim() == 0 or param.shape[0] != len(rows.mask):
        raise FrozenError(
            f"frozen rows of {rows.path!r}: the parameter there now has shape {tuple(param.shape)}, but "
            f"{len(rows.mask)} rows were frozen; expected the same number of rows. Freeze its rows again "
            f"(frozen.freeze(model, frozen.Rows({rows.path!r}, ...))) or thaw them: frozen.thaw(model, {rows.path!r})."
        )
    # fully_shard after the freeze swapped in a shard, or (inside forward) FSDP2's unsharded parameter
    refuse_sharded(param, rows.path, function, managed=manages_parameter(module, name))


def watch_slots(module: nn.Module, _args: object) -> None:
    """Forward pre-hook of a module holding row-frozen parameters: the slot keeps its rows.

    On the model and its copies the slot holds the record's parameter, and this returns at
    once. A parameter put there since (``load_state_dict(assign=True)``, ``module.weight =
    ...``) takes the same rows, or is refused when it cannot (another number of rows, an
    FSDP2 shard). Under ``torch.compile`` it is traced away (no graph break); a tensor
    ``torch.func.functional_call`` put in the slot for one call is left alone.
    """
    if torch.compiler.is_compiling():
        return
    for name, rows in list(rows_of(module).items()):
        param = module._parameters.get(name)
        if not isinstance(param, nn.Parameter):
            continue  # absent, or a tensor torch.func's functional_call put there
        if param is rows.param:
            rows.follow_resize(param, "frozen rows")  # resized in place since (resize_token_embeddings)
            rows.attach(param)  # requires_grad turned on by hand since: the hook it could not have before
            continue
        refuse_replaced(module, name, rows, param, "frozen rows")
        with LOCK:
            current = indexed_rows(param)  # already adopted through another slot of the same parameter
            if current is not None and current.param is param:
                set_rows(module, name, current, watch_slots)
            else:
                write_rows(param, rows.path, [(module, name)], rows.mask.clone())


def frozen_rows_in(view: View, function: str | None = None) -> dict[str, FrozenRows]:
    """``{first path: row record}`` for every parameter of the model with frozen rows. Reads only.

    With ``function``, a slot whose parameter was replaced by one that cannot take the rows
    (an FSDP2 shard, another number of rows) is refused, naming ``function``.
    """
    found: dict[int, FrozenRows] = {}
    for use, rows in view.rows():
        if function is not None and rows.param is not use.param and isinstance(use.param, nn.Parameter):
            refuse_replaced(use.owner, use.name, rows, use.param, function)
        if rows.param is use.param and use.param.dim() > 0:
            # resized in place and not followed yet: answer for the rows it has now
            rows = rows.resized(use.param.shape[0], function or "frozen rows")
        found.setdefault(id(use.param), rows)
    return {path: found[id(p)] for path, p in view.named if id(p) in found}  # named_parameters() order
