"""Freezing rows of a parameter (indices along its first dimension), for new-token embeddings.

A row-frozen parameter stays one ``Parameter`` with ``requires_grad=True`` (it trains, in
its other rows; ``state_dict`` keys do not change). A gradient hook zeroes its frozen rows
in every incoming gradient (``.grad``, ``torch.autograd.grad``, ``frozen.grad``), and every
optimizer step sees only its trainable rows (:mod:`frozen._rows.step`). Records are kept by
parameter identity, so they follow a tied parameter into every use (embedding and head).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from .._checks import check_model
from .._core import iter_param_uses, named_parameters
from .._errors import FrozenError, UnknownPathError, closest
from .carrier import refuse_sharded, restore_carried, sync_carriers
from .step import Layout, set_layout

__all__ = [
    "Rows",
    "RowsRecord",
    "check_rows",
    "freeze_rows",
    "frozen_rows",
    "apply_mask",
    "resolve_param",
    "restore_carried",
    "split_rows",
    "thaw_rows",
]

RowSpec = torch.Tensor | Sequence[int] | range | slice | int


class Rows:
    """Target: rows (indices along dimension 0) of the parameter at ``path``.

    Rows: an index tensor or boolean mask, list, ``range``, ``slice`` or int; negatives count from the end.

    Args:
        path: a parameter path as in ``state_dict`` (any path of a tied parameter).
        rows: the rows to freeze.
        trainable: the rows to keep training (instead of ``rows``).

    Raises:
        TypeError: ``path`` is not a string, or neither / both of ``rows`` and ``trainable`` given.

    Example:
        >>> Rows("wte.weight", trainable=range(-2, 0))
        Rows('wte.weight', trainable=range(-2, 0))
    """

    def __init__(self, path: str, rows: RowSpec | None = None, *, trainable: RowSpec | None = None) -> None:
        if not isinstance(path, str):
            raise TypeError(f"Rows(path, ...): expected path to be a parameter path string, received {path!r}.")
        if (rows is None) == (trainable is None):
            got = "both" if rows is not None else "neither"
            raise TypeError(f"Rows({path!r}, ...): expected exactly one of rows= and trainable=, received {got}.")
        self.path, self.rows, self.trainable = path, rows, trainable

    def __repr__(self) -> str:
        spec = f"{self.rows!r}" if self.rows is not None else f"trainable={self.trainable!r}"
        return f"Rows({self.path!r}, {spec})"

    def frozen_mask(self, n: int) -> torch.Tensor:
        """Return the boolean mask (``n`` rows, True = frozen) this target describes."""
        if self.rows is not None:
            return _mask(self.rows, n, f"{self!r}")
        return ~_mask(self.trainable, n, f"{self!r}")  # type: ignore[arg-type]


def _mask(spec: RowSpec, n: int, where: str) -> torch.Tensor:
    """The boolean mask of ``spec`` over ``n`` rows; raise naming ``where`` on a bad spec."""
    if isinstance(spec, slice):
        spec = range(*spec.indices(n))
    if isinstance(spec, torch.Tensor) and spec.dtype == torch.bool:
        if spec.shape != (n,):
            raise FrozenError(f"{where}: a boolean mask needs shape ({n},), received {tuple(spec.shape)}.")
        return spec.detach().cpu().clone()
    if isinstance(spec, bool) or not isinstance(spec, torch.Tensor | Sequence | range | int):
        raise TypeError(f"{where}: expected rows as int tensor, bool mask, list, range, slice or int; got {spec!r}.")
    index = torch.as_tensor([spec] if isinstance(spec, int) else list(spec) if isinstance(spec, range) else spec)
    if index.numel() and (index.is_floating_point() or index.is_complex() or index.dim() > 1):
        raise TypeError(f"{where}: expected integer row indices (one dimension), received {index.dtype} {index}.")
    index = index.flatten().to(torch.int64).cpu()
    if (bad := index[(index < -n) | (index >= n)]).numel():
        raise FrozenError(f"{where}: row {int(bad[0])} is out of range for {n} rows; use indices in [-{n}, {n}).")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[index % n] = True
    return mask


@dataclass(eq=False)
class RowsRecord:
    """What row freezing holds for one parameter: its frozen rows and the gradient hook."""

    path: str  # the parameter's first path in named_parameters() order
    mask: torch.Tensor  # bool, one entry per row, True = frozen
    frozen: torch.Tensor  # sorted int64 indices of the frozen rows
    layout: Layout  # the trainable rows, as optimizer steps see them
    handle: RemovableHandle  # the gradient hook zeroing the frozen rows

    @property
    def trainable(self) -> torch.Tensor:
        """Sorted int64 indices of the rows that train."""
        return self.layout.trainable


_RECORDS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # RowsRecord by parameter identity (tensors compare by value)


def resolve_param(model: nn.Module, path: object, function: str) -> tuple[str, nn.Parameter]:
    """Return ``(first path, parameter)`` for any path of a parameter of ``model``; validate it."""
    if not isinstance(path, str):
        raise TypeError(f"{function}: expected a parameter path string or frozen.Rows, received {path!r}.")
    uses = {use.path: use for use in iter_param_uses(model)}
    if path not in uses:
        raise UnknownPathError(
            f"{function}: no parameter at path {path!r}. Closest parameter paths: {closest(path, uses)}."
        )
    param, owner = uses[path].param, uses[path].owner
    if param.dim() == 0:
        raise FrozenError(f"{function}: {path!r} is a scalar parameter and has no rows; freeze it whole.")
    if isinstance(owner, nn.Embedding) and owner.sparse:
        raise FrozenError(f"{function}: {path!r} has sparse gradients (nn.Embedding(sparse=True)); use sparse=False.")
    refuse_sharded(param, path, function)
    return next(p for p, q in named_parameters(model) if q is param), param


def apply_mask(param: nn.Parameter, path: str, mask: torch.Tensor, model: nn.Module | None = None) -> RowsRecord | None:
    """Make ``mask`` the frozen rows of ``param`` (no row: remove row freezing); with ``model``, its carriers too."""
    old = _RECORDS.pop(param, None)
    if old is not None:
        old.handle.remove()
    if not bool(mask.any()):
        set_layout(param, None)
        if model is not None:
            sync_carriers(model, param, None)
        return None
    frozen = mask.nonzero().flatten()
    all_frozen = bool(mask.all())

    def zero_frozen_rows(grad: torch.Tensor) -> torch.Tensor:
        # Out of place: the incoming gradient may be shared with other autograd buffers. The
        # index follows the gradient's device, as model.to(device) keeps the Parameter object.
        return torch.zeros_like(grad) if all_frozen else grad.index_fill(0, frozen.to(grad.device), 0)

    layout = Layout.of(mask)
    record = RowsRecord(path, mask, frozen, layout, param.register_hook(zero_frozen_rows))
    set_layout(param, layout)
    _RECORDS[param] = record
    if model is not None:
        sync_carriers(model, param, record)
    return record


def check_rows(model: nn.Module, target: Rows, function: str) -> tuple[Rows, torch.Tensor]:
    """Validate a ``Rows`` target against ``model`` (path, rows); return it with its mask. Change nothing."""
    if not isinstance(target, Rows):
        raise TypeError(f"{function}: expected a frozen.Rows target, received {target!r}.")
    _, param = resolve_param(model, target.path, f"{function}(model, {target!r})")
    return target, target.frozen_mask(param.shape[0])


def freeze_rows(model: nn.Module, target: Rows) -> RowsRecord:
    """Freeze ``target``'s rows of a parameter, in addition to rows frozen before.

    Existing optimizer state keeps the trainable rows' entries and drops the frozen rows' at the next step.

    Returns:
        The parameter's :class:`RowsRecord` (``target`` names the parameter and rows of ``model``).

    Raises:
        TypeError: ``target`` is not a ``Rows``.
        frozen.UnknownPathError: no parameter at ``target.path``.
        frozen.FrozenError: bad rows, or the target freezes no row.

    Example:
        >>> import torch
        >>> emb = torch.nn.Embedding(5, 2)
        >>> freeze_rows(emb, Rows("weight", trainable=[4])).frozen.tolist()
        [0, 1, 2, 3]
        >>> _ = thaw_rows(emb, "weight")
    """
    check_model(model, "frozen.freeze_rows")
    if not isinstance(target, Rows):
        raise TypeError(f"frozen.freeze_rows(model, target): expected a frozen.Rows target, received {target!r}.")
    path, param = resolve_param(model, target.path, f"frozen.freeze_rows(model, {target!r})")
    mask = target.frozen_mask(param.shape[0])
    if not bool(mask.any()):  # an empty selection built by code must be loud, not a silent no-op
        raise FrozenError(f"frozen.freeze_rows(model, {target!r}): freezes none of the {len(mask)} rows; name one.")
    old = _RECORDS.get(param)
    record = apply_mask(param, path, mask | old.mask if old is not None else mask, model)
    assert record is not None
    return record


def thaw_rows(model: nn.Module, target: str | Rows) -> nn.Module:
    """Thaw every frozen row of the parameter at a path, or only a :class:`Rows` target's rows.

    Rows that thaw start from zero optimizer state. Thawing rows that are not frozen does nothing.

    Raises:
        frozen.UnknownPathError: no parameter at the path.

    Example:
        >>> import torch
        >>> emb = torch.nn.Embedding(5, 2)
        >>> _ = freeze_rows(emb, Rows("weight", [0, 1]))
        >>> _ = thaw_rows(emb, Rows("weight", [0]))
        >>> frozen_rows(emb)["weight"].frozen.tolist()
        [1]
    """
    check_model(model, "frozen.thaw_rows")
    path_arg = target.path if isinstance(target, Rows) else target
    path, param = resolve_param(model, path_arg, f"frozen.thaw_rows(model, {target!r})")
    old = _RECORDS.get(param)
    if old is not None:
        thawed = target.frozen_mask(len(old.mask)) if isinstance(target, Rows) else torch.ones_like(old.mask)
        apply_mask(param, path, old.mask & ~thawed, model)
    return model


def frozen_rows(model: nn.Module) -> dict[str, RowsRecord]:
    """Return ``{first path: record}`` for every parameter of ``model`` with frozen rows."""
    check_model(model, "frozen.frozen_rows")
    restore_carried(model)
    found = ((path, _RECORDS.get(p)) for path, p in named_parameters(model))
    return {path: record for path, record in found if record is not None}


def split_rows(targets: tuple) -> tuple[list[Rows], tuple]:
    """``Rows`` targets apart from selectors, as ``freeze``/``thaw`` take them."""
    return [t for t in targets if isinstance(t, Rows)], tuple(t for t in targets if not isinstance(t, Rows))
