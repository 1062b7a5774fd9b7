"""``report``: what is frozen in a model, row by row, and what freezing saves.

The report is a data object (:class:`Report`): rows and totals you can test and
serialise; ``str()`` is a deterministic plain table, ``rich`` renders it in colour,
Jupyter renders it as HTML (see ``_render.py``).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .._checks import check_model
from .._core import View
from .._errors import FrozenError
from .census import Census, ReportRow, row_of

__all__ = ["Report", "report"]


@dataclass(frozen=True)
class Report:
    """What ``frozen`` sees in a model: one row per module use, and totals.

    ``str(report)`` is a plain table (deterministic: the same model gives the same
    text); printed with ``rich`` it is coloured; in Jupyter it is an HTML table.
    Memory figures assume gradients and optimizer state in the parameters' dtype:
    a frozen parameter needs no gradient (its bytes once) and no Adam-style state
    (``exp_avg`` and ``exp_avg_sq``: its bytes twice).

    Attributes:
        rows: one :class:`ReportRow` per module use, ``named_modules()`` order.
        trainable_params, frozen_params: element counts over distinct parameters.
        trainable_bytes, frozen_bytes: the same, in bytes.
        depth: the depth the rows were collapsed to (``None``: every row).
        caches: what each part cached with :func:`frozen.cache` holds: ``{path: {"hits",
            "misses", "bytes", "store", ...}}`` (see :func:`frozen.cache_stats`).
    """

    rows: tuple[ReportRow, ...]
    trainable_params: int
    frozen_params: int
    trainable_bytes: int
    frozen_bytes: int
    depth: int | None = None
    caches: dict[str, dict[str, Any]] = field(default_factory=dict)  # frozen.cache: {path: counters}

    @property
    def total_params(self) -> int:
        """All parameter elements, each tensor counted once."""
        return self.trainable_params + self.frozen_params

    @property
    def trainable_percent(self) -> float:
        """Share of parameter elements that train, in percent (0 for an empty model)."""
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def frozen_percent(self) -> float:
        """Share of parameter elements that are frozen, in percent (0 for an empty model)."""
        return 100.0 * self.frozen_params / self.total_params if self.total_params else 0.0

    @property
    def gradient_bytes_saved(self) -> int:
        """Gradient memory that freezing saves: one gradient per frozen parameter."""
        return self.frozen_bytes

    @property
    def adam_state_bytes_saved(self) -> int:
        """Adam/AdamW state freezing saves: two moment tensors per frozen parameter."""
        return 2 * self.frozen_bytes

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain Python data (for JSON, logging, tests)."""
        rows = []
        for row in self.rows:
            item = asdict(row)
            item["tied_with"] = list(row.tied_with)
            item["eval_forced"] = row.eval_forced
            rows.append(item)
        return {
            "rows": rows,
            "totals": {
                "trainable_params": self.trainable_params,
                "frozen_params": self.frozen_params,
                "total_params": self.total_params,
                "trainable_percent": round(self.trainable_percent, 2),
                "frozen_percent": round(self.frozen_percent, 2),
                "trainable_bytes": self.trainable_bytes,
                "frozen_bytes": self.frozen_bytes,
                "gradient_bytes_saved": self.gradient_bytes_saved,
                "adam_state_bytes_saved": self.adam_state_bytes_saved,
            },
            "depth": self.depth,
            "caches": self.caches,
        }

    def __str__(self) -> str:
        from .render import plain_table

        return plain_table(self)

    def __rich__(self) -> Any:
        from .render import rich_renderable

        return rich_renderable(self)

    def _repr_html_(self) -> str:
        from .render import html_table

        return html_table(self)


def report(model: nn.Module, *, depth: int | None = None) -> Report:
    """Return a :class:`Report` of what is frozen in ``model`` and what it saves.

    Args:
        model: the model to describe.
        depth: keep rows whose path has at most this many dotted segments (``0``: the
            model only, ``1``: its children too); deeper parts are still counted in
            their ancestors' rows and in the totals. ``None`` (default) keeps every row.

    Returns:
        A :class:`Report`; ``print(report)`` shows the table.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``depth`` is not an int.
        frozen.FrozenError: ``depth`` is negative.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(4, 4)), torch.nn.Linear(4, 2))
        >>> r = frozen.report(net)
        >>> [(row.path, row.state, row.inference) for row in r.rows]
        [('', 'mixed', ''), ('0', 'frozen', 'forced eval'), ('1', 'trainable', '')]
        >>> r.trainable_params, r.frozen_params, r.adam_state_bytes_saved
        (10, 20, 160)
    """
    check_model(model, "frozen.report")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool)):
        raise TypeError(
            f"frozen.report(model, depth=...): expected depth to be an int or None, received {type(depth).__name__}."
        )
    if depth is not None and depth < 0:
        raise FrozenError(
            f"frozen.report(model, depth={depth}): expected depth >= 0 (0 shows the model only, "
            f"1 its children too) or None for every row, received {depth}."
        )
    census = Census(View(model).notice("frozen.report"))
    rows = [row_of(use, census) for use in census.uses if depth is None or _depth(use.path) <= depth]
    sizes, wanted = census.sizes, census.wanted
    trainable_keys = [key for key in sizes if key in wanted]
    frozen_keys = [key for key in sizes if key not in wanted]
    return Report(
        rows=tuple(rows),
        trainable_params=sum(sizes[k][0] for k in trainable_keys),
        frozen_params=sum(sizes[k][0] for k in frozen_keys),
        trainable_bytes=sum(sizes[k][1] for k in trainable_keys),
        frozen_bytes=sum(sizes[k][1] for k in frozen_keys),
        depth=depth,
        caches=_cache_stats(model),
    )


def _cache_stats(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``frozen.cache_stats(model)``, without importing the cache (and numpy) where nothing was ever cached.

    A part can only be cached by ``frozen.cache``, whose import loads the cache package: until
    then no model has a cached part, and the report (the Quickstart, ``python -m frozen report``)
    runs with torch alone.
    """
    if __package__.rpartition(".")[0] + "._cache" not in sys.modules:
        return {}
    from .._cache import cache_stats

    return cache_stats(model)


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0
