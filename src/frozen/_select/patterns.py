"""Selecting by path over a torch model: parameter selectors, compiled patterns, the indexed walk.

The pattern grammar itself is shared with the JAX backend (:mod:`frozen._grammar`). Here
:class:`PathTree` holds the model's uses in pre-order, where a subtree is the range
``[i, end[i])``, so a pattern is matched over a whole model in one walk and a hit covers its
subtree in one sweep; positional segments (``-1``, ``-2:``) read their container's span from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from torch import nn

from .._core import ModuleUse, ParamUse, View, iter_module_uses, iter_param_uses
from .._errors import ArgumentTypeError, SelectorError
from .._grammar import UNBOUNDED, Pattern, position

__all__ = ["PathTree", "ParamSelector", "compile_pattern", "params"]


@dataclass(frozen=True)
class ParamSelector:
    """A selector over parameters only (build it with :func:`params`); it never selects a module."""

    what: str | Callable[[str, nn.Parameter], bool]  # a path pattern, or a predicate (path, parameter) -> bool

    def __repr__(self) -> str:
        return f"params({getattr(self.what, '__name__', self.what)!r})"


def params(what: str | Callable[[str, nn.Parameter], bool]) -> ParamSelector:
    """Return a selector that names parameters only, by pattern or by predicate ``(path, parameter)``.

    Args:
        what: a path pattern (``"**"``: every parameter) or a predicate called once per
            parameter use as ``what(path, parameter)``.

    Returns:
        A selector for ``select`` / ``freeze`` / ``thaw`` and their ``exclude=``.

    Raises:
        frozen.FrozenError: ``what`` is neither a string nor a predicate -- a class such as
            ``torch.nn.Linear`` included (also a ``TypeError``).

    Example:
        >>> import torch, frozen
        >>> from frozen._select.patterns import params
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> frozen.select(net, params(lambda path, p: p.ndim == 1))
        ['0.bias', '1.weight', '1.bias']
    """
    if isinstance(what, type):
        # A class is callable, so it would pass for a predicate and fail (or select at random) at
        # the first parameter: Linear(path, parameter), int(path, parameter).
        name = (
            what.__name__
            if what.__module__ == "builtins"
            else f"torch.nn.{what.__name__}"
            if getattr(nn, what.__name__, None) is what
            else f"{what.__module__}.{what.__qualname__}"
        )
        by_type = (
            f"to freeze the modules of that type with their parameters, pass the type itself as a "
            f"target, frozen.freeze(model, {name}); "
            if issubclass(what, nn.Module)
            else ""
        )
        raise ArgumentTypeError(
            f"frozen.params(what={what.__name__}): expected a path pattern (str) or a predicate "
            f"(path, parameter) -> bool, received the class {name}. params() selects parameters by path "
            f"or by predicate, never by type: {by_type}for parameters, pass a pattern or a function, e.g. "
            f"frozen.params('**.weight') or frozen.params(lambda path, p: p.ndim == 1)."
        )
    if not isinstance(what, str) and not callable(what):
        raise ArgumentTypeError(
            f"frozen.params(...): expected a path pattern (str) or a predicate (path, parameter) -> bool, "
            f"received {type(what).__name__} {what!r}. Pass e.g. frozen.params(lambda path, p: p.ndim == 1)."
        )
    return ParamSelector(what)


def compile_pattern(
    pattern: str, function: str = "frozen.select", role: str = "target", spans: Mapping[str, int] | None = None
) -> Callable[[str], bool]:
    """Return a function ``path -> bool`` for a dotted-path pattern (see ``docs/selectors.md``).

    Args:
        pattern: the pattern, e.g. ``"encoder.layer.*.attention"`` or ``"**.bias"``.
        function: the public function to name in error messages.
        role: what the pattern is to that function (``"target"``, ``"exclude"``).
        spans: container path -> one more than its largest numbered child. Needed only by
            patterns that count from the end (``"layer.-1"``, ``"layer.-2:"``).

    Returns:
        A function telling whether a module or parameter path matches.

    Raises:
        frozen.SelectorError: the pattern is malformed, or counts from the end without ``spans``.

    Example:
        >>> match = compile_pattern("encoder.**.bias")
        >>> match("encoder.bias"), match("encoder.layer.0.bias"), match("head.bias")
        (True, True, False)
        >>> compile_pattern("layer.-1", spans={"layer": 12})("layer.11")
        True
    """
    compiled = Pattern(pattern, function, role)
    if compiled.counts_from_end and spans is None:
        raise SelectorError(
            f"{function}: the {role} pattern {pattern!r} counts from the end of a container, which needs "
            f"the model to know its length, and {function} does not support it. Name the positions "
            f"from the start instead (e.g. '10-11' or '10:')."
        )
    return lambda path: compiled.match(path, spans)


class PathTree:
    """A model's module and parameter uses in pre-order, indexed for linear-time selection.

    Example:
        >>> import torch
        >>> tree = PathTree(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
        >>> [u.path for u in tree.uses], tree.end, tree.spans
        (['', '0', '1'], [3, 2, 3], [2, 0, 0])
        >>> tree.module_hits(Pattern("-1")), tree.param_hits(Pattern("**.bias"))
        ([False, False, True], [False, True])
    """

    def __init__(self, model: nn.Module, view: View | None = None) -> None:
        self.model = model
        self.view = view  # the caller's walk of the model, if it has one: not walked again
        self.uses: list[ModuleUse] = view.uses if view is not None else list(iter_module_uses(model))
        self.index = {use.path: i for i, use in enumerate(self.uses)}
        # A child's path is its parent's path, a dot and its name (names never hold dots).
        split = [use.path.rpartition(".") for use in self.uses]
        self.parent = [-1] + [self.index[head] for head, _, _ in split[1:]]
        self.names = [name for _, _, name in split]
        self.end = list(range(1, len(self.uses) + 1))
        for i in range(len(self.uses) - 1, 0, -1):  # children come after their parent
            self.end[self.parent[i]] = max(self.end[self.parent[i]], self.end[i])

    @cached_property
    def params(self) -> list[ParamUse]:
        """Every parameter use, in model order (only built when a selector needs it)."""
        return self.view.params if self.view is not None else list(iter_param_uses(self.model))

    @cached_property
    def owner(self) -> list[int]:
        """For each parameter use, the index of the module use holding it."""
        return [self.index[use.path.rpartition(".")[0]] for use in self.params]

    @cached_property
    def spans(self) -> list[int]:
        """For each module use, one more than its largest numbered child (module or parameter)."""
        spans = [0] * len(self.uses)
        children = zip(self.parent[1:], self.names[1:])
        for parent, name in [*children, *((o, p.name) for o, p in zip(self.owner, self.params))]:
            k = position(name)
            if k is not None and k >= spans[parent]:
                spans[parent] = k + 1
        return spans

    def masks(self, pattern: Pattern) -> list[int]:
        """The automaton state of ``pattern`` after reading each module use's path."""
        spans = self._spans(pattern)
        masks = [pattern.start]
        for i in range(1, len(self.uses)):
            masks.append(pattern.step(masks[self.parent[i]], self.names[i], spans[self.parent[i]]))
        return masks

    def _spans(self, pattern: Pattern) -> list[int]:
        return self.spans if pattern.counts_from_end else [UNBOUNDED] * len(self.uses)

    def module_hits(self, pattern: Pattern, masks: list[int] | None = None) -> list[bool]:
        """Whether each module use's path matches ``pattern``."""
        return [pattern.accepts(mask) for mask in (masks if masks is not None else self.masks(pattern))]

    def param_hits(self, pattern: Pattern, masks: list[int] | None = None) -> list[bool]:
        """Whether each parameter use's path matches ``pattern``."""
        masks, spans = masks if masks is not None else self.masks(pattern), self._spans(pattern)
        return [pattern.accepts(pattern.step(masks[o], use.name, spans[o])) for o, use in zip(self.owner, self.params)]

    def cover(self, hits: list[bool]) -> list[bool]:
        """Expand hits to whole subtrees: one sweep, as a subtree is a range of the walk."""
        covered, until = [], 0
        for i, hit in enumerate(hits):
            if hit and self.end[i] > until:
                until = self.end[i]
            covered.append(i < until)
        return covered
