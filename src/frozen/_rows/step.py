"""The optimizer side of row freezing: every optimizer step sees only the trainable rows.

While some parameter has frozen rows, two global optimizer hooks are installed. Before a
step, each row-frozen parameter the optimizer holds is *narrowed*: its ``.data`` becomes
the trainable rows only (a view when they are one contiguous range, else a gathered
copy) and its ``.grad`` those rows of the gradient. The optimizer then does exactly what
it would do to a separate tensor holding only those rows -- weight decay, momentum,
foreach and fused kernels included -- and keeps state for those rows only. After the step
the rows are written back and the original tensors restored: the ``Parameter`` object,
its storage and its ``state_dict`` entry never change.

Optimizer state built this way has the trainable rows' shape and carries an integer
``state[param][LAYOUT_KEY]`` naming the row layout it belongs to, so a checkpoint loaded
against other rows is refused instead of silently misapplied.
"""

from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from .._errors import FrozenError

__all__ = ["LAYOUT_KEY", "Layout", "fit_rows", "index_rows", "indexed_rows", "layout_of"]

LAYOUT_KEY = "frozen_rows_layout"


@dataclass(frozen=True, eq=False)
class Layout:
    """Which rows of a parameter train: ``n`` rows in all, ``trainable`` (sorted int64)."""

    n: int
    trainable: torch.Tensor
    span: tuple[int, int] | None  # (start, stop) when the trainable rows are one range: a view suffices
    key: int  # fingerprint stored in optimizer state built for this layout

    @staticmethod
    def of(frozen_mask: torch.Tensor) -> Layout:
        """Return the layout whose trainable rows are those where ``frozen_mask`` is False.

        Example:
            >>> layout = Layout.of(torch.tensor([True, True, False, False]))
            >>> layout.trainable.tolist(), layout.span
            ([2, 3], (2, 4))
        """
        trainable = (~frozen_mask).nonzero().flatten().to(torch.int64)
        k = trainable.numel()
        start = int(trainable[0]) if k else 0
        span = (start, start + k) if k and int(trainable[-1]) == start + k - 1 else None
        key = zlib.crc32(frozen_mask.numpy().tobytes()) | (frozen_mask.numel() << 32)
        return Layout(frozen_mask.numel(), trainable, span, key)

    def narrow(self, full: torch.Tensor) -> torch.Tensor:
        """The trainable rows of ``full``: a view for a range, else a copy."""
        if self.span is not None:
            return full.narrow(0, self.span[0], self.span[1] - self.span[0])
        return full.index_select(0, self.trainable.to(full.device))

    def copy_rows(self, full: torch.Tensor) -> torch.Tensor:
        """The trainable rows of ``full`` as a new tensor (never a view that keeps ``full`` alive)."""
        return self.narrow(full).clone()

    def widen(self, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like ``like`` holding ``rows`` at the trainable rows and zeros elsewhere.

        ``like`` may have another number of rows than this layout (its parameter was resized
        since, ``resize_token_embeddings``): rows past its end are cut, rows it added are zeros.
        """
        full = rows.new_zeros((self.n, *rows.shape[1:])).index_copy_(0, self.trainable.to(rows.device), rows)
        return fit_rows(full, like.shape[0])


def fit_rows(full: torch.Tensor, n: int) -> torch.Tensor:
    """``full`` cut to its first ``n`` rows, or padded with rows of zeros up to ``n`` (the rows a resize added)."""
    if full.shape[0] >= n:
        return full[:n].clone() if full.shape[0] > n else full
    return torch.cat([full, full.new_zeros((n - full.shape[0], *full.shape[1:]))])


# The row records (``record.py``'s ``FrozenRows``) by parameter identity: an optimizer step sees
# parameters, not the modules whose records hold them. Only ``record.py`` writes it, with the
# record, so it is an index of the records, not a second account of which rows are frozen.
# Weak keys, and records refer to their parameter weakly: a freed model leaves nothing here.
_INDEX: WeakIdKeyDictionary = WeakIdKeyDictionary()
_SEEN: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()  # optimizers that stepped narrowed rows
_ACTIVE: dict[int, list[tuple[torch.Tensor, Layout, torch.Tensor, torch.Tensor | None]]] = {}
_HANDLES: list[RemovableHandle] = []


def layout_of(param: torch.Tensor) -> Layout | None:
    """Return the row layout of ``param`` when some of its rows are frozen, else ``None``."""
    rows = _INDEX.get(param)
    return None if rows is None else rows.layout


def indexed_rows(param: torch.Tensor) -> Any:
    """The row record indexed for ``param``, or ``None``."""
    return _INDEX.get(param)


def index_rows(param: torch.Tensor, rows: Any, old: Layout | None = None) -> None:
    """Make ``rows`` (a row record with a ``layout``; ``None``: no row freezing) the one optimizers see for ``param``.

    Optimizer state already narrowed to the old layout (``old``, default: the one indexed
    now) is widened back to the full shape (zeros for rows that had none), so the next step
    narrows it to the new layout: rows that keep training keep their state, rows that join
    start from zero state.
    """
    old = old if old is not None else layout_of(param)
    for optimizer in list(_SEEN):
        state = optimizer.state.get(param)
        if old is not None and state and state.get(LAYOUT_KEY) == old.key:
            _relayout(param, state, old.widen, rows=old.trainable.numel(), full=True)
    if rows is None:
        _INDEX.pop(param, None)
    else:
        if param not in _INDEX:
            weakref.finalize(param, _sync_hooks).atexit = False  # a model freed with frozen rows leaves no hooks
        _INDEX[param] = rows
    _sync_hooks()


def _sync_hooks() -> None:
    """Install the global optimizer hooks while some live parameter has frozen rows; remove them after."""
    live = any(True for _ in _INDEX.keys())  # a parameter being freed no longer counts
    if live and not _HANDLES:
        _HANDLES.extend([register_optimizer_step_pre_hook(_pre_step), register_optimizer_step_post_hook(_post_step)])
    elif not live:
        while _HANDLES:
            _HANDLES.pop().remove()


def _relayout(param: torch.Tensor, state: dict[str, Any], convert: Any, *, rows: int, full: bool) -> None:
    """Convert every per-row tensor (``rows`` rows) in ``state``; drop the state if one has another shape."""
    shape = (rows, *param.shape[1:])
    per_row = {k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() >= 1}
    if not full:
        for k in per_row:  # state of the whole tensor from before a resize: rows cut, added rows start at zero
            if state[k].shape[1:] == param.shape[1:] and state[k].shape[0] != rows:
                state[k] = fit_rows(state[k], rows)
    if any(state[k].shape != shape for k in per_row):
        state.clear()  # factored or flattened state (Adafactor, LBFGS): no row mapping, start fresh
        return
    for k in per_row:
        state[k] = convert(state[k], param) if full else convert(state[k])
    if full:
        state.pop(LAYOUT_KEY, None)


def _check_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, layout: Layout) -> None:
    """Raise unless ``param``'s state in ``optimizer`` is full-shaped or built for ``layout``."""
    state = optimizer.state.get(param)
    if not state or state.get(LAYOUT_KEY, layout.key) == layout.key:
        return
    raise FrozenError(
        f"optimizer.step(): the {type(optimizer).__name__} state of a parameter of shape {tuple(param.shape)} "
        f"was built for other frozen rows (layout {state[LAYOUT_KEY]}) than the ones frozen now "
        f"(layout {layout.key}). Restore the rows saved with that optimizer checkpoint "
        f"(frozen.load_state / load_rows_state) before loading it, or drop that parameter's optimizer state."
    )


def _narrowed(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, Layout]]:
    """The row-frozen parameters of ``optimizer`` that will be updated this step (validated)."""
    found = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            layout = layout_of(param)
            if layout is not None and layout.n != param.shape[0]:
                # Resized in place since (resize_token_embeddings swaps .data) and no forward of a
                # module holding it followed yet: its record follows now, or refuses.
                _INDEX[param].follow_resize(param, f"{type(optimizer).__name__}.step()")
                layout = layout_of(param)
            if layout is not None and param.grad is not None:
                _check_state(optimizer, param, layout)
                found.append((param, layout))
    return found


@torch.no_grad()
def _narrow(optimizer: torch.optim.Optimizer, found: list[tuple[torch.Tensor, Layout]]) -> None:
    """Swap each parameter's data and gradient for its trainable rows."""
    active = _ACTIVE.setdefault(id(optimizer), [])
    for param, layout in found:
        full, grad = param.data, param.grad
        state = optimizer.state.get(param)
        if state and LAYOUT_KEY not in state:
            # Trained whole before: keep the trainable rows' state, as copies so the full state is freed.
            _relayout(param, state, layout.copy_rows, rows=layout.n, full=False)
        param.grad = None  # the grad setter checks shapes against the current data
        if layout.trainable.numel():
            param.data = layout.narrow(full)
            param.grad = layout.narrow(grad)  # type: ignore[arg-type]
        active.append((param, layout, full, grad))
    _SEEN.add(optimizer)


@torch.no_grad()
def _widen(optimizer: torch.optim.Optimizer) -> None:
    """Write the updated rows back and restore the full data and gradient tensors."""
    for param, layout, full, grad in _ACTIVE.pop(id(optimizer), []):
        rows = param.data
        if layout.span is None and layout.trainable.numel():
            full.index_copy_(0, layout.trainable.to(full.device), rows)
        param.grad = None
        param.data = full
        param.grad = grad
        state = optimizer.state.get(param)
        if state:
            state[LAYOUT_KEY] = layout.key


def _pre_step(optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Global pre-hook: narrow now, or around the closure when the step is given one."""
    _widen(optimizer)  # a previous step that raised left its parameters narrowed
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        _narrow(optimizer, _narrowed(optimizer))
        return None

    def narrowing_closure() -> Any:
        # The closure runs forward and backward on the full tensors; the update after it sees the rows.
        _widen(optimizer)
        with torch.enable_grad():
            loss = closure()
        _narrow(optimizer, _narrowed(optimizer))
        return loss

    return (args[:1], {**kwargs, "closure": narrowing_closure})


def _post_step(optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Global post-hook: restore the full tensors."""
    _widen(optimizer)
