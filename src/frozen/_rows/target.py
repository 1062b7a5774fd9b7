"""``frozen.Rows``: a target naming rows (indices along dimension 0) of one parameter.

The rows are checked twice, each fact once: their *type* when the target is built (a string,
a float or a tensor with no data can never name rows), their *range* when a call meets the
parameter and so knows how many rows it has. Both raise errors that name ``rows=`` (or
``trainable=``) and say what to pass instead, never torch's own conversion errors.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from .._errors import FrozenError

__all__ = ["RowSpec", "Rows", "RowsTypeError", "split_rows"]

RowSpec = torch.Tensor | Sequence[int] | range | slice | int

_FORMS = "integer row indices (an int, a list or range of ints, a slice, an integer tensor) or a boolean mask"


class RowsTypeError(FrozenError, TypeError):
    """``rows=`` / ``trainable=`` of a kind that cannot name rows (a ``FrozenError`` and a ``TypeError``)."""


class Rows:
    """Target: rows (indices along dimension 0) of the parameter at ``path``.

    Rows: an index tensor or boolean mask, list, ``range``, ``slice`` or int; negatives count from the end.

    Args:
        path: a parameter path as in ``state_dict`` (any path of a tied parameter).
        rows: the rows to freeze.
        trainable: the rows to keep training (instead of ``rows``).

    Raises:
        TypeError: ``path`` is not a string, or neither / both of ``rows`` and ``trainable`` given.
        frozen.FrozenError: the rows are of a kind that names no rows (a string, floats, a nested
            list, a tensor on the ``meta`` device); a :class:`RowsTypeError`, also a ``TypeError``.

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
        argument = "rows" if rows is not None else "trainable"
        self._spec = _normalise(rows if rows is not None else trainable, f"frozen.Rows({path!r}, {argument}=...)")

    def __repr__(self) -> str:
        spec = f"{self.rows!r}" if self.rows is not None else f"trainable={self.trainable!r}"
        return f"Rows({self.path!r}, {spec})"

    @property
    def argument(self) -> str:
        """The keyword the rows were given with: ``"rows"`` or ``"trainable"``."""
        return "rows" if self.rows is not None else "trainable"

    def frozen_mask(self, n: int, where: str | None = None) -> torch.Tensor:
        """Return the boolean mask (``n`` rows, True = frozen) this target describes.

        Raises:
            frozen.FrozenError: a row is out of range for ``n`` rows, or a mask has another length.
        """
        mask = _mask(self._spec, n, where or repr(self), self.argument)
        return mask if self.rows is not None else ~mask


_Spec = slice | range | list[int] | torch.Tensor


def _normalise(spec: object, where: str) -> _Spec:
    """Check that ``spec`` can name rows at all; return it as a slice, range, int list or CPU tensor."""

    def refuse(received: str) -> RowsTypeError:
        return RowsTypeError(
            f"{where}: expected {_FORMS}, received {received}. Pass e.g. [0, 1, 2], range(0, 4) or "
            f"slice(-4, None) (rows counted from the end)."
        )

    if isinstance(spec, slice):
        try:
            spec.indices(1)  # slice("a") and friends fail here, not at the call that uses them
        except TypeError:
            raise refuse(f"{spec!r}, whose bounds are not ints") from None
        return spec
    if isinstance(spec, range):
        return spec
    if isinstance(spec, torch.Tensor):
        if spec.device.type == "meta":
            raise RowsTypeError(
                f"{where}: expected {_FORMS} holding values, received a tensor on the 'meta' device, which has "
                f"none to read rows from. Pass the rows as a CPU tensor or a list of ints."
            )
        if spec.is_floating_point() or spec.is_complex() or spec.dim() > 1:
            raise refuse(f"a {spec.dtype} tensor of shape {tuple(spec.shape)} (expected one dimension of integers)")
        return spec.detach().flatten().cpu()
    if isinstance(spec, bool):
        raise refuse(f"{spec!r} (a bool; for a mask pass a boolean tensor with one entry per row)")
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise refuse(f"{type(spec).__name__} {spec!r}")
    if spec and all(isinstance(x, bool) for x in spec):
        return torch.tensor(list(spec), dtype=torch.bool)  # a list of bools is a mask, as a bool tensor is
    values = []
    for x in spec:
        try:
            if isinstance(x, bool):
                raise TypeError
            values.append(operator.index(x))
        except TypeError:
            raise refuse(f"{spec!r}, whose entry {x!r} is not an int") from None
    return values


def _mask(spec: _Spec, n: int, where: str, argument: str) -> torch.Tensor:
    """The boolean mask of a normalised ``spec`` over ``n`` rows; raise naming ``where`` on a bad range."""
    if isinstance(spec, torch.Tensor) and spec.dtype == torch.bool:
        if spec.shape != (n,):
            raise FrozenError(
                f"{where}: {argument}= is a boolean mask, which needs shape ({n},), one entry per row; received "
                f"{tuple(spec.shape)}. "
                f"Build it with torch.zeros({n}, dtype=torch.bool) and set the rows to freeze."
            )
        return spec.clone()
    if isinstance(spec, slice):
        spec = range(*spec.indices(n))
    if isinstance(spec, torch.Tensor):
        index = spec.to(torch.int64)
        bad = index[(index < -n) | (index >= n)]
        first = int(bad[0]) if bad.numel() else None
    elif isinstance(spec, range):
        ends = [spec[0], spec[-1]] if len(spec) else []
        first = next((i for i in ends if not -n <= i < n), None)
        index = torch.arange(spec.start, spec.stop, spec.step) if first is None else torch.empty(0)
    else:
        # Python ints are checked as Python ints: 2**63 is out of range, not an overflow.
        first = next((i for i in spec if not -n <= i < n), None)
        index = torch.tensor(spec, dtype=torch.int64) if first is None else torch.empty(0)
    if first is not None:
        raise FrozenError(
            f"{where}: in {argument}=, row {first} is out of range for {n} rows; expected indices in "
            f"[-{n}, {n}) (negative ones count from the end): drop it, or name the parameter it belongs to."
        )
    mask = torch.zeros(n, dtype=torch.bool)
    mask[index % n if n else index] = True
    return mask


def split_rows(targets: tuple) -> tuple[list[Rows], tuple]:
    """``Rows`` targets apart from selectors, as ``freeze``/``thaw`` take them."""
    return [t for t in targets if isinstance(t, Rows)], tuple(t for t in targets if not isinstance(t, Rows))
