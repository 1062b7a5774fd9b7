"""Freezing rows of a parameter (indices along its first dimension), for new-token embeddings.

``frozen.freeze`` / ``frozen.thaw`` take :class:`Rows` targets beside their selectors and
run them through the same validate -> plan -> apply pipeline (``plan.py``). The functions
here do the same for rows alone, each on one walk of the model (``_core``'s ``View``), and
:func:`frozen_rows` answers which rows are frozen without changing anything.
"""

from __future__ import annotations

from torch import nn

from .._checks import check_model
from .._core import LOCK, View, rows_of
from .plan import apply_rows, plan_freeze_rows, plan_thaw_rows
from .record import FrozenRows, frozen_rows_in
from .target import Rows, split_rows

__all__ = ["FrozenRows", "Rows", "freeze_rows", "frozen_rows", "split_rows", "thaw_rows"]


def freeze_rows(model: nn.Module, target: Rows) -> FrozenRows:
    """Freeze ``target``'s rows of a parameter, in addition to rows frozen before.

    Existing optimizer state keeps the trainable rows' entries and drops the frozen rows' at the next step.

    Returns:
        The parameter's :class:`FrozenRows` (``target`` names the parameter and rows of ``model``).

    Raises:
        TypeError: ``target`` is not a ``Rows``.
        frozen.UnknownPathError: no parameter at ``target.path``.
        frozen.FrozenError: bad rows, the target freezes no row, or the parameter is frozen whole.

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
    with LOCK:
        view = View(model)
        changes = plan_freeze_rows(view, [target], "frozen.freeze_rows")
        apply_rows(changes)
    owner, name = changes[0].slots[0]
    return rows_of(owner)[name]


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
    with LOCK:
        apply_rows(plan_thaw_rows(View(model), [target], set(), "frozen.thaw_rows"))
    return model


def frozen_rows(model: nn.Module) -> dict[str, FrozenRows]:
    """Return ``{first path: row record}`` for every parameter of ``model`` with frozen rows. Changes nothing."""
    check_model(model, "frozen.frozen_rows")
    return frozen_rows_in(View(model))
