"""Row freezing as ``freeze`` and ``thaw`` do everything: validate -> plan -> apply.

Each ``Rows`` target is resolved once against the call's :class:`~frozen._core.View` (path,
parameter, every slot holding it, rows in range, the parameter able to take row freezing)
into a :class:`RowsChange`: the parameter's frozen rows after the call. Nothing is resolved
again when the plan is applied, and nothing changes before every target is valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._core import ParamUse, View, rows_of
from .._errors import FrozenError, UnknownPathError, closest
from .record import FrozenRows, refuse_replaced, refuse_sharded, write_rows
from .target import Rows

__all__ = ["RowsChange", "apply_rows", "plan_freeze_rows", "plan_thaw_rows", "resolve_param", "rows_at"]


@dataclass
class RowsChange:
    """The frozen rows one parameter will have once a call is applied."""

    param: nn.Parameter
    path: str  # its first path in the model
    slots: list[tuple[nn.Module, str]]  # every slot of the model holding it
    mask: torch.Tensor  # bool, True = frozen; no True: row freezing removed


def resolve_param(view: View, path: object, function: str) -> tuple[str, nn.Parameter, ParamUse]:
    """Return ``(first path, parameter, its use at path)`` for any path of a parameter; validate it."""
    if not isinstance(path, str):
        raise TypeError(f"{function}: expected a parameter path string or frozen.Rows, received {path!r}.")
    use = next((u for u in view.params if u.path == path), None)
    if use is None:
        raise UnknownPathError(
            f"{function}: no parameter at path {path!r}. Closest parameter paths: "
            f"{closest(path, [u.path for u in view.params])}."
        )
    param, owner = use.param, use.owner
    if param.dim() == 0:
        raise FrozenError(f"{function}: {path!r} is a scalar parameter and has no rows; freeze it whole.")
    if isinstance(owner, nn.Embedding) and owner.sparse:
        raise FrozenError(f"{function}: {path!r} has sparse gradients (nn.Embedding(sparse=True)); use sparse=False.")
    refuse_sharded(param, path, function)
    return view.param_paths[id(param)], param, use


def rows_at(
    view: View, param: nn.Parameter, function: str, *, strict: bool = True
) -> tuple[list[tuple[nn.Module, str]], FrozenRows | None]:
    """Every slot holding ``param``, and the row record they keep (``None``: no rows frozen).

    A record made for a parameter replaced in the slot since follows the slot: its rows are
    the new parameter's, which must be able to take them (``strict``); a thaw (not strict)
    only removes such a record, so it need not fit.
    """
    slots: dict[tuple[int, str], tuple[nn.Module, str]] = {}
    current = None
    for use in view.params:
        if use.param is param:
            slots.setdefault((id(use.owner), use.name), (use.owner, use.name))
            found = rows_of(use.owner).get(use.name)
            if found is not None and (current is None or found.param is param):
                current = found
    if current is not None and current.param is not param:
        owner, name = next(iter(slots.values()))
        if strict:
            refuse_replaced(owner, name, current, param, function)
        elif param.dim() == 0 or param.shape[0] != len(current.mask):
            current = None
    return list(slots.values()), current


def _change(
    view: View, changes: dict[int, RowsChange], path: str, param: nn.Parameter, where: str, strict: bool = True
) -> RowsChange:
    if id(param) not in changes:
        slots, current = rows_at(view, param, where, strict=strict)
        if current is None:
            mask = torch.zeros(param.shape[0], dtype=torch.bool)
        else:  # the parameter may have been resized in place since its rows froze: they follow it
            mask = current.fitted(param.shape[0], where, strict=strict)
        changes[id(param)] = RowsChange(param, path, slots, mask)
    return changes[id(param)]


def plan_freeze_rows(view: View, targets: list[Rows], function: str) -> list[RowsChange]:
    """Validate ``Rows`` targets to freeze (in addition to rows frozen before); change nothing.

    Raises:
        frozen.UnknownPathError: no parameter at a target's path.
        frozen.FrozenError: bad rows, a target that freezes no row, or a parameter that is
            frozen whole (no use trains it), scalar, sparse or sharded.
    """
    changes: dict[int, RowsChange] = {}
    for target in targets:
        where = f"{function}(model, {target!r})"
        path, param, _ = resolve_param(view, target.path, where)
        if id(param) not in view.trainable:
            raise FrozenError(_frozen_whole(view, where, path, param))
        mask = target.frozen_mask(param.shape[0], where)
        if not bool(mask.any()):  # an empty selection built by code must be loud, not a silent no-op
            raise FrozenError(f"{where}: freezes none of the {len(mask)} rows; name one.")
        change = _change(view, changes, path, param, where)
        change.mask |= mask
    return list(changes.values())


def plan_thaw_rows(view: View, targets: list[Rows | str], covered: set[int], function: str) -> list[RowsChange]:
    """Validate what a ``thaw`` does to frozen rows; change nothing.

    Every row thaws in the parameters in ``covered`` (``id()`` of parameters a thawed part or
    path holds); a ``Rows`` target thaws its rows, and a path every row of its parameter.
    Thawing rows that are not frozen does nothing. Thawing rows of a parameter that is also
    frozen whole changes its row record only: the parameter stays frozen whole.
    """
    changes: dict[int, RowsChange] = {}
    for use, _ in view.rows():
        if id(use.param) in covered:
            path = view.param_paths[id(use.param)]
            _change(view, changes, path, use.param, function, strict=False).mask[:] = False
    for target in targets:
        where = f"{function}(model, {target!r})"
        path, param, _ = resolve_param(view, target.path if isinstance(target, Rows) else target, where)
        if not isinstance(target, Rows):
            thawed = torch.ones(param.shape[0], dtype=torch.bool)
        else:
            thawed = target.frozen_mask(param.shape[0], where)  # validated even where nothing is frozen
        change = _change(view, changes, path, param, where, strict=False)
        change.mask &= ~thawed
    return [c for c in changes.values() if _changes_anything(c)]


def _changes_anything(change: RowsChange) -> bool:
    """Skip a parameter with no frozen rows before or after (thawing rows that are not frozen)."""
    return bool(change.mask.any()) or any(rows_of(owner).get(name) is not None for owner, name in change.slots)


def apply_rows(changes: list[RowsChange]) -> None:
    """Write validated row changes into the records (the caller settles the model next)."""
    for change in changes:
        write_rows(change.param, change.path, change.slots, change.mask)


def _frozen_whole(view: View, where: str, path: str, param: nn.Parameter) -> str:
    frozen_at = next((u.path.rpartition(".")[0] for u in view.params if u.param is param and u.frozen), None)
    if frozen_at is not None:
        fix = (
            f"to freeze only some of its rows, thaw it first (frozen.thaw(model, {frozen_at!r})) and then "
            f"freeze the rows; to keep it frozen whole, drop this target"
        )
    else:
        fix = "its requires_grad is False, set by hand: set it to True first, or drop this target"
    return (
        f"{where}: the parameter at {path!r} is frozen whole (no use of the model trains it), so there are no "
        f"trainable rows to freeze. Expected a parameter that trains; {fix}. Nothing was changed."
    )
