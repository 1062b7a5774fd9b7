"""The rows of a report: what each module use holds, whether it trains, and who keeps it frozen.

:class:`Census` reads one view of the model once (every parameter's uses, sizes, frozen rows
and flipped flags); :func:`row_of` turns one module use into a :class:`ReportRow` from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._core import View, switched_off
from .._rows import frozen_rows_in

__all__ = ["Census", "ReportRow", "row_of"]


@dataclass(frozen=True)
class ReportRow:
    """One use of a module in the model (a module used at two paths has two rows).

    Attributes:
        path: ``state_dict``-style path (``""`` is the model itself).
        type: the module's class name (a ``Frozen`` wrapper's inner module).
        params: number of parameter elements under this path, each tensor counted once.
        state: ``"trainable"`` (every parameter under it trains through this use),
            ``"frozen"`` (none does), ``"mixed"``, or ``"-"`` (no parameters, not frozen);
            ``"frozen here, trains via PATH"`` for a frozen use whose parameters still
            train through another use (a tied weight: its values change); ``"mixed (flag flipped
            by PEFT)"`` for a frozen use with a flag switched on outside frozen (``flipped_by``).
        inference: ``"forced eval"`` when this use is frozen with ``mode="eval"`` (BatchNorm
            and Dropout keep inference behaviour while the model trains), ``"inherit"``
            for a frozen use with ``mode="inherit"``, ``"inherit, buffers may change"``
            when such a part holds buffers, and ``""`` for a use that is not frozen.
        tied_with: paths of the same parameter objects reached from outside this row.
        dtype: the parameters' dtype (``"float32"``), several joined by ``","``, or ``"-"``.
    """

    path: str
    type: str
    params: int
    state: str
    inference: str
    tied_with: tuple[str, ...]
    dtype: str
    frozen_by: str = ""  # who keeps it frozen: "frozen", "peft" (another library), "hand" (requires_grad)
    frozen_rows: int = 0  # rows frozen with frozen.Rows in parameters under this path (they count as trainable)
    flipped_by: str = ""  # a frozen use whose flags were switched back on outside frozen: "peft" or "outside"

    @property
    def eval_forced(self) -> bool:
        """Whether this part runs in inference behaviour even while the model trains."""
        return self.inference == "forced eval"


class Census:
    """What each parameter is, where it is reached and where it trains: read from one view of the model."""

    def __init__(self, view: View) -> None:
        self.wanted = view.trainable
        self.uses = view.uses
        # Per module path: parameter id -> trains through some use under this path.
        self.under: dict[str, dict[int, bool]] = {use.path: {} for use in self.uses}
        self.reached_at: dict[int, list[str]] = {}
        self.trained_at: dict[int, list[str]] = {}
        self.sizes: dict[int, tuple[int, int, str]] = {}  # elements, bytes, dtype name
        self.params: dict[int, Any] = {}  # id -> its first ParamUse
        for puse in view.params:
            key, param = id(puse.param), puse.param
            self.params.setdefault(key, puse)
            self.reached_at.setdefault(key, []).append(puse.path)
            if not puse.frozen:
                self.trained_at.setdefault(key, []).append(puse.path)
            self.sizes[key] = (
                param.numel(),
                param.numel() * param.element_size(),
                str(param.dtype).removeprefix("torch."),
            )
            # A flipped parameter trains through its frozen uses: none of them detaches it.
            trains_here = key in self.wanted and (not puse.frozen or key in view.flipped)
            for prefix in _ancestors(puse.path):
                held = self.under[prefix]
                held[key] = held.get(key, False) or trains_here
        self.claimed = view.claimed
        self.flipped = view.flipped_by
        named = dict(view.named)
        self.frozen_rows = {id(named[path]): int(r.mask.sum()) for path, r in frozen_rows_in(view).items()}


def row_of(use: Any, census: Census) -> ReportRow:
    """The report's row for one module use, read from the census."""
    held = census.under[use.path]
    if not held:
        state = "frozen" if use.frozen else "-"
    elif all(held.values()):
        state = "trainable"
    elif not any(held.values()):
        state = "frozen"
    else:
        state = "mixed"
    inside = use.path + "." if use.path else ""
    tied = sorted({p for key in held for p in census.reached_at[key] if not p.startswith(inside)})
    if state == "frozen" and any(key in census.wanted for key in held):
        # A frozen use whose parameters still train through another use: say which.
        via = {p for key in held if key in census.wanted for p in census.trained_at[key] if not p.startswith(inside)}
        state = f"frozen here, trains via {', '.join(sorted(via))}"
    whos = {census.flipped[key] for key in held if key in census.flipped} if use.frozen else set()
    flipped_by = "" if not whos else "peft" if whos == {"peft"} else "outside"
    state += {"": "", "peft": " (flag flipped by PEFT)", "outside": " (flag flipped outside frozen)"}[flipped_by]
    dtypes = sorted({census.sizes[key][2] for key in held})
    return ReportRow(
        path=use.path,
        type=type(use.module).__name__,
        params=sum(census.sizes[key][0] for key in held),
        state=state,
        inference=_inference(use),
        tied_with=tuple(tied),
        dtype=",".join(dtypes) if dtypes else "-",
        frozen_by=_frozen_by(use, state, held, census),
        frozen_rows=sum(census.frozen_rows.get(key, 0) for key in held),
        flipped_by=flipped_by,
    )


def _frozen_by(use: Any, state: str, held: dict[int, bool], census: Census) -> str:
    """Who keeps a frozen row frozen: this library, another one (PEFT), or a hand-set flag."""
    if not state.startswith("frozen"):
        return ""
    if use.frozen:
        return "frozen"
    if held and all(key in census.claimed for key in held):
        return "peft"
    params = census.params
    if any(switched_off(params[k].param, params[k].owner, params[k].name) for k in held):
        return "frozen"
    return "hand" if held else ""


def _ancestors(param_path: str) -> list[str]:
    """Module paths that contain the parameter at ``param_path``, root first."""
    parts = param_path.split(".")[:-1]
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def _inference(use: Any) -> str:
    if not use.frozen or use.mode is None:
        return ""
    if use.mode == "eval":
        return "forced eval"
    has_buffers = any(b is not None for b in use.module.buffers())
    return "inherit, buffers may change" if has_buffers else "inherit"
