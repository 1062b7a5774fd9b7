"""The one exception family of ``frozen``.

Every error the library raises on bad input is a :class:`FrozenError` (a
``ValueError``). Where the *type* of an argument is wrong, it is an
:class:`ArgumentTypeError`, which is also a ``TypeError`` (so ``except TypeError``
keeps working). Messages name the argument or path, what was expected, what was
received, and the fix. Every warning is a :class:`FrozenWarning`, so one filter
(``warnings.simplefilter("error", frozen.FrozenWarning)``) covers them all.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from collections.abc import Iterable

__all__ = [
    "ArgumentTypeError",
    "ForeignFlagWarning",
    "FrozenError",
    "FrozenWarning",
    "InvalidModeError",
    "NonScalarLossError",
    "SelectorError",
    "TiedParameterError",
    "TiedParameterWarning",
    "UnknownPathError",
    "closest",
    "warn_outside",
]


class FrozenError(ValueError):
    """Base class of every error ``frozen`` raises on bad input."""


class ArgumentTypeError(FrozenError, TypeError):
    """An argument of the wrong type: a class where a predicate is expected, a number where a path is."""


class InvalidModeError(FrozenError):
    """A ``mode=`` argument that is not one of the documented modes."""


class UnknownPathError(FrozenError, KeyError):
    """A module or parameter path that does not exist in the model."""

    # KeyError.__str__ would wrap the message in quotes; keep it readable.
    __str__ = ValueError.__str__


class NonScalarLossError(FrozenError):
    """``frozen.grad`` was given a loss that is not a single number."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return a human-readable list of the candidates closest to ``name``."""
    pool = [c for c in candidates]
    near = difflib.get_close_matches(name, pool, n=n, cutoff=0.4)
    if not near:
        # Fall back to paths that share the first segment, then to the first few.
        head = name.split(".", 1)[0]
        near = [c for c in pool if c.split(".", 1)[0] == head][:n] or pool[:n]
    shown = ", ".join(repr(c) for c in near) if near else "(the model has none)"
    return shown


class SelectorError(FrozenError):
    """A target or ``exclude=`` selector that is malformed or matches no module."""


class TiedParameterError(FrozenError):
    """``freeze`` would reach a parameter or module that an unselected part also uses."""


class FrozenWarning(UserWarning):
    """Base class of every warning ``frozen`` gives (a ``UserWarning``)."""


class TiedParameterWarning(FrozenWarning):
    """``freeze(..., tied="freeze")`` froze a parameter an unselected part also uses."""


class ForeignFlagWarning(FrozenWarning):
    """A ``requires_grad`` flag ``frozen`` turned off was turned back on by someone else.

    The parameter then gets a gradient although a frozen use reaches it; ``frozen``'s
    answers (``trainable``, ``is_frozen``, ``report``) say so, and the next ``settle``
    turns the flag off again (docs/freeze.md, "Flags flipped outside frozen").
    """


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_outside(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside ``frozen``.

    The same warning is reached through several public functions at different depths
    (a query, ``settle``, a callback); a fixed ``stacklevel`` would point inside the library.
    """
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
