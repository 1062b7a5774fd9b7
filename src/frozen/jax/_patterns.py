"""Dotted-path patterns (``docs/selectors.md``), run as a small automaton over path segments.

The automaton's states ("how many pattern segments are matched") are a bit mask, stepped
once per segment; a node's mask is one step from its parent's, so a whole model is
matched in one walk whatever the number of ``**``. Positional segments (``-1``, ``-2:``)
need their container's *span*: one more than its largest numbered child.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._errors import SelectorError

__all__ = ["Pattern", "position"]

Segment = Callable[[str, int], bool] | None  # (child name, container span) -> match; None is "**"

_INDEX = re.compile(r"-(\d+)")
_RANGE = re.compile(r"(\d+)-(\d+)")
_SLICE = re.compile(r"(-?\d+)?:(-?\d+)?")
_UNBOUNDED = 1 << 62


def position(name: str) -> int | None:
    """The number a child's name stands for (``"3"`` -> 3), or None for other names."""
    return int(name) if name.isascii() and name.isdigit() else None


class Pattern:
    """A compiled pattern: ``start`` mask, ``step(mask, name, span)``, ``accepts(mask)``.

    Example:
        >>> p = Pattern("blocks.0-2.**")
        >>> p.match("blocks.1.linear.weight"), p.match("blocks.3"), p.match("blocks.2")
        (True, False, True)
        >>> Pattern("blocks.-1").match("blocks.7", spans={"blocks": 8})
        True
    """

    def __init__(self, text: str, function: str = "fj.select", role: str = "target") -> None:
        self.text = text
        self.function, self.role = function, role
        pieces = text.split(".") if text else []
        self.segments: list[Segment] = [self._segment(piece) for piece in pieces]
        self.accept = 1 << len(self.segments)
        self.start = self._close(1)
        self._steps: dict[tuple[int, str, int], int] = {}

    def _close(self, mask: int) -> int:
        for k, segment in enumerate(self.segments):
            if segment is None and mask >> k & 1:
                mask |= 1 << (k + 1)  # "**" may match zero segments
        return mask

    def step(self, mask: int, name: str, span: int = _UNBOUNDED) -> int:
        """The states after reading one more path segment ``name`` (in a container of ``span``)."""
        if not mask:
            return 0
        key = (mask, name, span)
        found = self._steps.get(key)
        if found is None:
            found = 0
            for k, segment in enumerate(self.segments):
                if mask >> k & 1:
                    if segment is None:
                        found |= 1 << k
                    elif segment(name, span):
                        found |= 1 << (k + 1)
            self._steps[key] = found = self._close(found)
        return found

    def accepts(self, mask: int) -> bool:
        """Whether a path that led to ``mask`` matches the whole pattern."""
        return bool(mask & self.accept)

    def match(self, path: str, spans: dict[str, int] | None = None) -> bool:
        """Whether ``path`` matches; ``spans`` maps container paths to their spans."""
        mask, parent = self.start, ""
        for name in path.split(".") if path else []:
            mask = self.step(mask, name, (spans or {}).get(parent, 0))
            parent = f"{parent}.{name}" if parent else name
        return self.accepts(mask)

    def _fail(self, problem: str, fix: str) -> SelectorError:
        return SelectorError(f"{self.function}: the {self.role} pattern {self.text!r} {problem}. {fix}")

    def _segment(self, piece: str) -> Segment:
        if piece == "":
            raise self._fail("has an empty segment", "Expected segments such as 'blocks.0'; '' is the model itself.")
        if piece == "**":
            return None
        if any(re.fullmatch(r"-0+", number) for number in piece.split(":")):
            raise self._fail(
                f"has the position {piece!r}: -0 is 0 in Python, the first child, not one from the end",
                "Count from the end with -1 for the last child; 'a:' selects from a to the end.",
            )
        if bounds := _RANGE.fullmatch(piece):
            low, high = int(bounds.group(1)), int(bounds.group(2))
            if low > high:
                raise self._fail(
                    f"has the range {piece!r} whose start is after its end",
                    f"Ranges 'a-b' are inclusive and ascending: write '{high}-{low}'.",
                )
            return lambda name, span: (k := position(name)) is not None and low <= k <= high
        if index := _INDEX.fullmatch(piece):
            back = int(index.group(1))
            return lambda name, span: position(name) == span - back
        if bounds := _SLICE.fullmatch(piece):
            return self._slice(piece, bounds)
        if ":" in piece:
            raise self._fail(
                f"has the segment {piece!r}, which is not a slice",
                "Slices are 'a:b', 'a:' or ':b' with whole numbers (no step); 'a-b' is an inclusive range.",
            )
        if "*" not in piece and "?" not in piece:
            return lambda name, span: name == piece
        regex = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in piece))
        return lambda name, span: regex.fullmatch(name) is not None

    def _slice(self, piece: str, bounds: re.Match[str]) -> Segment:
        start = int(bounds.group(1)) if bounds.group(1) else 0
        stop = int(bounds.group(2)) if bounds.group(2) else None
        if start >= 0 and stop is not None and stop >= 0 and start > stop:
            raise self._fail(
                f"has the slice {piece!r} whose start is after its end",
                f"Slices 'a:b' run from a up to b (b excluded): write '{stop}:{start}'.",
            )

        def within(name: str, span: int) -> bool:
            k = position(name)
            if k is None:
                return False
            low = start if start >= 0 else span + start
            high = _UNBOUNDED if stop is None else stop if stop >= 0 else span + stop
            return low <= k < high

        return within
