"""The dotted-path pattern grammar both backends share (``docs/selectors.md``), run as an automaton.

A pattern such as ``"encoder.**.bias"`` runs as a nondeterministic automaton whose
states ("how many segments are matched so far") are kept as a bit mask, stepped once
per path segment. A node's mask is one step from its parent's, so a whole tree is
matched in one walk, one step per module or parameter, whatever the number of ``**``
(recursion over ``**`` is exponential in their number).

Positional segments (``-1``, ``-2:``) need the *span* of their container: one more than
its largest numbered child (``len()`` of a ``ModuleList``); the walk over a model that
supplies spans is each backend's own (``_select/patterns.py`` for torch, ``jax/_select.py``).
This module imports neither torch nor jax, so ``frozen.jax`` shares it without importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from ._errors import SelectorError

__all__ = ["UNBOUNDED", "Pattern", "position"]

# A segment matcher takes (child name, span of its container); None stands for "**".
SegmentMatcher = Callable[[str, int], bool] | None

_INDEX = re.compile(r"-(\d+)")  # a negative index; non-negative ones are plain names
_RANGE = re.compile(r"(\d+)-(\d+)")  # inclusive, as before slices existed
_SLICE = re.compile(r"(-?\d+)?:(-?\d+)?")  # Python-style, end excluded
UNBOUNDED = 1 << 62  # the span when spans are not needed: no position counts from it


def position(name: str) -> int | None:
    """Return the number a child's name stands for (``"3"`` -> 3), or None for other names."""
    return int(name) if name.isascii() and name.isdigit() else None


class Pattern:
    """A compiled dotted-path pattern: ``start`` mask, ``step(mask, name, span)``, ``accepts(mask)``.

    Example:
        >>> p = Pattern("blocks.0-2.**")
        >>> p.match("blocks.1.linear.weight"), p.match("blocks.3"), p.match("blocks.2")
        (True, False, True)
        >>> Pattern("blocks.-1").match("blocks.7", spans={"blocks": 8})
        True
    """

    def __init__(
        self,
        text: str,
        function: str = "frozen.select",
        role: str = "target",
        error: Callable[[str], Exception] = SelectorError,
    ) -> None:
        self.text = text
        self.error = error  # each backend raises its own SelectorError (frozen.jax never imports frozen's)
        self.counts_from_end = False  # whether matching needs container spans
        pieces = text.split(".") if text else []
        self.segments: list[SegmentMatcher] = [self._segment(piece, function, role) for piece in pieces]
        self.accept = 1 << len(self.segments)
        self.start = self._close(1)
        self._steps: dict[tuple[int, str, int], int] = {}

    def _close(self, mask: int) -> int:
        """Add the states reachable by letting a ``**`` match zero segments."""
        for k, segment in enumerate(self.segments):
            if segment is None and mask >> k & 1:
                mask |= 1 << (k + 1)
        return mask

    def step(self, mask: int, name: str, span: int = UNBOUNDED) -> int:
        """Return the states after reading one more path segment ``name``."""
        if not mask:
            return 0
        key = (mask, name, span if self.counts_from_end else 0)
        found = self._steps.get(key)
        if found is None:
            found = 0
            for k, segment in enumerate(self.segments):
                if mask >> k & 1:
                    if segment is None:
                        found |= 1 << k  # "**" consumes the segment and stays
                    elif segment(name, span):
                        found |= 1 << (k + 1)
            found = self._close(found)
            self._steps[key] = found  # names repeat a lot (weight, bias, 0, 1, ...)
        return found

    def accepts(self, mask: int) -> bool:
        """Whether a path that led to ``mask`` matches the whole pattern."""
        return bool(mask & self.accept)

    def match(self, path: str, spans: Mapping[str, int] | None = None) -> bool:
        """Whether ``path`` matches; ``spans`` maps container paths to their spans."""
        mask, parent = self.start, ""
        for name in path.split(".") if path else []:
            span = spans.get(parent, 0) if spans is not None else UNBOUNDED
            mask = self.step(mask, name, span)
            parent = f"{parent}.{name}" if parent else name
        return self.accepts(mask)

    def _segment(self, piece: str, function: str, role: str) -> SegmentMatcher:
        def fail(problem: str, fix: str) -> Exception:
            return self.error(f"{function}: the {role} pattern {self.text!r} {problem}. {fix}")

        if piece == "":
            raise fail("has an empty segment", "Expected segments such as 'encoder.layer.0'; '' is the model itself.")
        if piece == "**":
            return None
        if any(re.fullmatch(r"-0+", number) for number in re.split(":", piece)):
            # "-0:" would select everything and ":-0" nothing: an off-by-one, not an intent.
            raise fail(
                f"has the position {piece!r}: -0 is 0 in Python, the first child, not one from the end",
                "Count from the end with -1 for the last child; 'a:' selects from a to the end.",
            )
        if bounds := _RANGE.fullmatch(piece):
            low, high = int(bounds.group(1)), int(bounds.group(2))
            if low > high:
                raise fail(
                    f"has the range {piece!r} whose start is after its end",
                    f"Ranges 'a-b' are inclusive and ascending: write '{high}-{low}'.",
                )
            return lambda name, span: (k := position(name)) is not None and low <= k <= high
        if index := _INDEX.fullmatch(piece):
            self.counts_from_end = True
            back = int(index.group(1))
            return lambda name, span: position(name) == span - back
        if bounds := _SLICE.fullmatch(piece):
            return self._slice(piece, bounds, fail)
        if ":" in piece:
            raise fail(
                f"has the segment {piece!r}, which is not a slice",
                "Slices are 'a:b', 'a:' or ':b' with whole numbers (no step); 'a-b' is an inclusive range.",
            )
        if "*" not in piece and "?" not in piece:
            return lambda name, span: name == piece
        regex = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in piece))
        return lambda name, span: regex.fullmatch(name) is not None

    def _slice(self, piece: str, bounds: re.Match[str], fail: Callable[[str, str], Exception]) -> SegmentMatcher:
        start = int(bounds.group(1)) if bounds.group(1) else 0
        stop = int(bounds.group(2)) if bounds.group(2) else None
        if start < 0 or (stop is not None and stop < 0):
            self.counts_from_end = True
        elif stop is not None and start > stop:
            raise fail(
                f"has the slice {piece!r} whose start is after its end",
                f"Slices 'a:b' run from a up to b (b excluded): write '{stop}:{start}'.",
            )

        def within(name: str, span: int) -> bool:
            k = position(name)
            if k is None:
                return False
            low = start if start >= 0 else span + start  # Python's slice rules: below 0 means 0
            high = UNBOUNDED if stop is None else stop if stop >= 0 else span + stop
            return low <= k < high

        return within
