"""The error family of ``frozen.jax``, and the helper that names the closest paths.

Every error on bad input is a :class:`FrozenError` (a ``ValueError``), or a
``TypeError`` where the *type* of an argument is wrong. A message names the argument
or path, what was expected, what was received, and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

__all__ = ["FrozenError", "SelectorError", "closest", "check_choice"]


class FrozenError(ValueError):
    """Base class of every error ``frozen.jax`` raises on bad input."""


class SelectorError(FrozenError):
    """A target or ``exclude=`` selector that is malformed or matches nothing in the model."""


def closest(name: str, candidates: Iterable[str], n: int = 4) -> str:
    """Return the candidates closest to ``name`` as a readable list (``"'a', 'b'"``).

    Close spellings first (``difflib``); failing those, the paths that share the longest
    leading segments with ``name``; failing those, the first few paths.

    Example:
        >>> closest("encoder.layers.0", ["encoder.layer", "encoder.layer.0", "head"])
        "'encoder.layer.0', 'encoder.layer'"
    """
    pool = [c for c in candidates if c]
    near = difflib.get_close_matches(name, pool, n=n, cutoff=0.6)
    if not near:
        segments = name.split(".")
        for keep in range(len(segments) - 1, 0, -1):
            prefix = ".".join(segments[:keep]) + "."
            near = [c for c in pool if c.startswith(prefix) and c.count(".") == keep][:n]
            if near:
                break
        else:
            near = [c for c in pool if "." not in c][:n] or pool[:n]
    return ", ".join(repr(c) for c in near) if near else "(the model has no named parts)"


def check_choice(function: str, argument: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`FrozenError`.

    Example:
        >>> check_choice("fj.freeze", "mode", "eval", ("eval", "inherit"))
        'eval'
    """
    if isinstance(value, str) and value in choices:
        return value
    options = " or ".join(repr(c) for c in choices)
    raise FrozenError(f"{function}: {argument}= must be {options}; received {value!r}. Pass {argument}={choices[0]!r}.")
