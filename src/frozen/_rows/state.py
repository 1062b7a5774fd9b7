"""Frozen rows as plain data: what ``frozen.state`` saves and ``frozen.load_state`` restores."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_model
from .._core import named_parameters
from .._errors import FrozenError
from .rows import apply_mask, frozen_rows, resolve_param

__all__ = ["check_rows_state", "load_rows_state", "rows_state"]


def _ranges(mask: torch.Tensor) -> list[list[int]]:
    """``[[start, stop], ...]`` of the runs of True in ``mask`` (compact JSON for row sets)."""
    edges = torch.diff(
        mask.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8), append=torch.zeros(1, dtype=torch.int8)
    )
    starts, stops = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    return [[a, b] for a, b in zip(starts, stops, strict=True)]


def rows_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Return the frozen rows of ``model`` as JSON-serialisable data.

    Example:
        >>> import torch, frozen
        >>> emb = torch.nn.Embedding(6, 2)
        >>> _ = frozen.freeze(emb, frozen.Rows("weight", [0, 1, 2, 5]))
        >>> rows_state(emb)
        {'weight': {'rows': 6, 'frozen': [[0, 3], [5, 6]]}}
        >>> _ = frozen.thaw(emb, "weight")
    """
    return {path: {"rows": r.layout.n, "frozen": _ranges(r.mask)} for path, r in frozen_rows(model).items()}


def check_rows_state(model: nn.Module, saved: object) -> list[tuple[nn.Parameter, str, torch.Tensor]]:
    """Validate ``saved`` (from :func:`rows_state`) against ``model``; change nothing.

    Returns ``[(parameter, first path, frozen mask)]``, the plan :func:`load_rows_state` applies.

    Raises:
        TypeError: ``saved`` is not a dict.
        frozen.UnknownPathError: a saved path is not a parameter of ``model``.
        frozen.FrozenError: an entry is malformed or saved for another number of rows.
    """
    check_model(model, "frozen.load_rows_state")
    if not isinstance(saved, dict):
        raise TypeError(f"frozen.load_rows_state(model, saved): expected the dict rows_state returned, got {saved!r}.")
    plan = []
    for path, entry in saved.items():
        where = f"frozen.load_rows_state(model, saved[{path!r}])"
        first, param = resolve_param(model, path, where)
        try:
            n, runs = int(entry["rows"]), [(int(a), int(b)) for a, b in entry["frozen"]]
        except (KeyError, TypeError, ValueError) as error:
            raise FrozenError(
                f"{where}: expected {{'rows': int, 'frozen': [[start, stop], ...]}}, got {entry!r}."
            ) from error
        if n != param.shape[0] or any(not 0 <= a < b <= n for a, b in runs):
            raise FrozenError(
                f"{where}: saved for {n} rows as runs {runs[:3]}..., the parameter has {param.shape[0]} rows; "
                f"load the rows state saved with this model."
            )
        plan.append((param, first, torch.zeros(n, dtype=torch.bool)))
        for a, b in runs:
            plan[-1][2][a:b] = True
    return plan


def load_rows_state(model: nn.Module, saved: dict[str, Any]) -> nn.Module:
    """Make the frozen rows of ``model`` exactly those in ``saved`` (from :func:`rows_state`).

    Validates every entry (:func:`check_rows_state`) before changing anything; parameters
    with frozen rows that ``saved`` does not name are thawed.

    Raises: as :func:`check_rows_state`.

    Example:
        >>> import torch
        >>> emb = torch.nn.Embedding(6, 2)
        >>> _ = load_rows_state(emb, {"weight": {"rows": 6, "frozen": [[1, 4]]}})
        >>> frozen_rows(emb)["weight"].trainable.tolist()
        [0, 4, 5]
        >>> _ = load_rows_state(emb, {})
    """
    plan = check_rows_state(model, saved)
    named = dict(named_parameters(model))
    for path, record in frozen_rows(model).items():
        if not any(param is named[path] for param, _, _ in plan):
            apply_mask(named[path], path, torch.zeros_like(record.mask), model)
    for param, first, mask in plan:
        apply_mask(param, first, mask, model)
    return model
