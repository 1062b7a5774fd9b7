"""Frozen rows as plain data: what ``frozen.state`` saves and ``frozen.load_state`` restores."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_model
from .._core import LOCK, View
from .._errors import FrozenError
from .plan import RowsChange, apply_rows, resolve_param, rows_at
from .record import frozen_rows_in

__all__ = ["load_rows_state", "plan_rows_state", "rows_state"]


def _ranges(mask: torch.Tensor) -> list[list[int]]:
    """``[[start, stop], ...]`` of the runs of True in ``mask`` (compact JSON for row sets)."""
    edges = torch.diff(
        mask.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8), append=torch.zeros(1, dtype=torch.int8)
    )
    starts, stops = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    return [[a, b] for a, b in zip(starts, stops, strict=True)]


def rows_state(model: nn.Module | View) -> dict[str, dict[str, Any]]:
    """Return the frozen rows of ``model`` (or of a view of it) as JSON-serialisable data. Changes nothing.

    Example:
        >>> import torch, frozen
        >>> emb = torch.nn.Embedding(6, 2)
        >>> _ = frozen.freeze(emb, frozen.Rows("weight", [0, 1, 2, 5]))
        >>> rows_state(emb)
        {'weight': {'rows': 6, 'frozen': [[0, 3], [5, 6]]}}
        >>> _ = frozen.thaw(emb, "weight")
    """
    view = model if isinstance(model, View) else View(model)
    return {path: {"rows": r.layout.n, "frozen": _ranges(r.mask)} for path, r in frozen_rows_in(view).items()}


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plan_rows_state(view: View, saved: object) -> list[RowsChange]:
    """Validate ``saved`` (from :func:`rows_state`) against the model; return the changes that make it so.

    Parameters with frozen rows that ``saved`` does not name are thawed. Changes nothing.

    Raises:
        TypeError: ``saved`` is not a dict.
        frozen.UnknownPathError: a saved path is not a parameter of the model.
        frozen.FrozenError: an entry is malformed (a row count or bound that is not an int, a
            run out of order) or saved for another number of rows.
    """
    if not isinstance(saved, dict):
        raise TypeError(f"frozen.load_rows_state(model, saved): expected the dict rows_state returned, got {saved!r}.")
    changes: dict[int, RowsChange] = {}
    for path, entry in saved.items():
        where = f"frozen.load_state: the saved state's 'rows' entry {path!r}"
        first, param, _ = resolve_param(view, path, where)
        runs = entry.get("frozen") if isinstance(entry, dict) else None
        n = entry.get("rows") if isinstance(entry, dict) else None
        if (
            not _int(n)
            or not isinstance(runs, list)
            or not all(isinstance(r, list | tuple) and len(r) == 2 and all(map(_int, r)) for r in runs)
        ):
            raise FrozenError(
                f"{where} is {entry!r}; expected {{'rows': int, 'frozen': [[start, stop], ...]}} with int row "
                f"counts and bounds, as frozen.state(model) saves it. Save the state with frozen.state(model) "
                f"and do not edit it. Nothing was changed."
            )
        if n != param.shape[0] or any(not 0 <= a < b <= n for a, b in runs):
            raise FrozenError(
                f"{where}: saved for {n} rows as runs {runs[:3]}..., the parameter has {param.shape[0]} rows; "
                f"load the rows state saved with this model. Nothing was changed."
            )
        mask = torch.zeros(n, dtype=torch.bool)
        for a, b in runs:
            mask[a:b] = True
        slots, _ = rows_at(view, param, where, strict=False)
        changes[id(param)] = RowsChange(param, first, slots, mask)
    for use, _ in view.rows():  # frozen now, not saved: thawed
        if id(use.param) not in changes:
            slots, _ = rows_at(view, use.param, "frozen.load_state", strict=False)
            path = view.param_paths[id(use.param)]
            changes[id(use.param)] = RowsChange(use.param, path, slots, torch.zeros(0, dtype=torch.bool))
    return list(changes.values())


def load_rows_state(model: nn.Module, saved: dict[str, Any]) -> nn.Module:
    """Make the frozen rows of ``model`` exactly those in ``saved`` (from :func:`rows_state`).

    Validates every entry (:func:`plan_rows_state`) before changing anything; parameters
    with frozen rows that ``saved`` does not name are thawed.

    Raises: as :func:`plan_rows_state`.

    Example:
        >>> import torch
        >>> emb = torch.nn.Embedding(6, 2)
        >>> _ = load_rows_state(emb, {"weight": {"rows": 6, "frozen": [[1, 4]]}})
        >>> from frozen._rows.rows import frozen_rows
        >>> frozen_rows(emb)["weight"].trainable.tolist()
        [0, 4, 5]
        >>> _ = load_rows_state(emb, {})
    """
    check_model(model, "frozen.load_rows_state")
    with LOCK:
        apply_rows(plan_rows_state(View(model), saved))
    return model
