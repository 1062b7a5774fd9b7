"""Selectors: which modules of a model a target names (contract S11).

The pattern language is documented in one place, ``docs/selectors.md``. In short:
a pattern is a dotted module path whose segments may be ``*`` (one segment), ``**``
(any number of segments, zero included), an inclusive index range ``0-5`` for
numbered children, or a glob with ``*`` / ``?`` inside one segment. Besides
patterns, a target can be a module type (``isinstance``), a module object
(identity) or a predicate ``(path, module) -> bool``.

A target selects the module(s) it matches *and everything below them*; ``exclude=``
removes what it matches, again with everything below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from torch import nn

from ._checks import check_model
from ._errors import SelectorError, closest
from ._tree import ModuleUse, iter_module_uses, join

__all__ = ["select", "resolve", "compile_pattern", "Selection", "Selector", "NORM_TYPES", "in_subtree"]

Selector = str | type | nn.Module | Callable[[str, nn.Module], bool]

# What ``train_norms=True`` keeps trainable: every normalisation layer torch ships.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)

_RANGE = re.compile(r"(\d+)-(\d+)")


class Selection(NamedTuple):
    """The result of resolving targets: the selected uses and the directly matched ones."""

    uses: list[ModuleUse]  # every selected use, subtrees included, minus exclusions, in model order
    matched: list[ModuleUse]  # the uses a target matched itself (before subtrees and exclusions)


def select(
    model: nn.Module, *targets: Selector, exclude: Selector | Iterable[Selector] = (), train_norms: bool = False
) -> list[str]:
    """Return the paths of the modules that ``freeze(model, *targets, ...)`` would freeze.

    Each target selects the modules it matches together with their whole subtree;
    ``exclude=`` removes the modules it matches, again with their subtrees. The result
    lists every selected module path (``state_dict`` style, ``""`` is the model itself)
    in ``named_modules()`` order, so it is exactly the preview of a ``freeze`` call.
    The pattern language is described in ``docs/selectors.md``.

    Args:
        model: the model to select in.
        *targets: patterns (``"encoder.layer.0-5"``), module types, module objects or
            predicates ``(path, module) -> bool``. None at all selects the whole model.
        exclude: one selector or a list of them, removed from the selection. Types and
            predicates may match nothing here (so a generic recipe such as
            ``exclude=nn.BatchNorm2d`` works on any model); patterns and objects must match.
        train_norms: also exclude every normalisation layer (BatchNorm, InstanceNorm,
            LayerNorm, GroupNorm, RMSNorm, LocalResponseNorm) -- fastai's "train the norms".

    Returns:
        The selected module paths.

    Raises:
        TypeError: ``model`` is not a module, or a selector has an unsupported type.
        frozen.SelectorError: a pattern is malformed, or a target matches no module.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> frozen.select(net, "0-1"), frozen.select(net, torch.nn.Linear, exclude="2")
        (['0', '1'], ['0'])
    """
    check_model(model, "frozen.select")
    selection = resolve(model, targets, exclude, train_norms=train_norms, function="frozen.select")
    return [use.path for use in selection.uses]


def resolve(model: nn.Module, targets: tuple, exclude: Any, *, train_norms: bool = False, function: str) -> Selection:
    """Resolve ``targets`` minus ``exclude`` to uses of ``model``; raise before anything changes."""
    if not isinstance(train_norms, bool):
        raise TypeError(f"{function}(..., train_norms=...): expected True or False, received {train_norms!r}.")
    uses = list(iter_module_uses(model))
    excluded = list(_as_selectors(exclude, function))
    if train_norms:
        excluded.append(NORM_TYPES)
    if targets:
        matched = _match_all(uses, targets, function, "target", must_match=lambda s: True)
    else:
        matched = [uses[0]]  # no target: the model itself, hence everything
    # Exclusions by type or predicate may match nothing; patterns and objects name
    # something specific, so an empty match there is a typo worth an error.
    removed = _match_all(uses, excluded, function, "exclude", must_match=lambda s: isinstance(s, (str, nn.Module)))
    chosen = _subtrees(uses, matched)
    dropped = _subtrees(uses, removed)
    return Selection([u for u in uses if u.path in chosen and u.path not in dropped], matched)


def in_subtree(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it."""
    return root == "" or path == root or path.startswith(root + ".")


def _subtrees(uses: list[ModuleUse], roots: list[ModuleUse]) -> set[str]:
    return {u.path for u in uses if any(in_subtree(u.path, r.path) for r in roots)}


def _as_selectors(exclude: Any, function: str) -> Iterable[Selector]:
    if isinstance(exclude, (str, type, nn.Module)) or (callable(exclude) and not isinstance(exclude, Iterable)):
        return (exclude,)
    if isinstance(exclude, Iterable):
        return tuple(exclude)
    raise TypeError(
        f"{function}(..., exclude=...): expected a selector or a list of selectors, received "
        f"{type(exclude).__name__}. Pass e.g. exclude='head' or exclude=(torch.nn.LayerNorm, 'pooler')."
    )


def _match_all(
    uses: list[ModuleUse], selectors: Iterable[Any], function: str, role: str, must_match: Callable[[Any], bool]
) -> list[ModuleUse]:
    matched: dict[str, ModuleUse] = {}
    for selector in selectors:
        hits = _match_one(uses, selector, function, role)
        if not hits and must_match(selector):
            raise SelectorError(_no_match_message(uses, selector, function, role))
        matched.update((u.path, u) for u in hits)
    return [u for u in uses if u.path in matched]


def _match_one(uses: list[ModuleUse], selector: Any, function: str, role: str) -> list[ModuleUse]:
    if isinstance(selector, str):
        pattern = compile_pattern(selector, function, role)
        return [u for u in uses if pattern(u.path)]
    if isinstance(selector, tuple) and selector and all(isinstance(t, type) for t in selector):
        selector_types: Any = selector  # NORM_TYPES, or a tuple of types as isinstance takes it
    elif isinstance(selector, type):
        selector_types = selector
    else:
        selector_types = None
    if selector_types is not None:
        return [u for u in uses if isinstance(u.module, selector_types) or isinstance(u.wrapper, selector_types)]
    if isinstance(selector, nn.Module):
        return [u for u in uses if u.module is selector or u.wrapper is selector]
    if callable(selector):
        # The inner module, as paths skip wrapper levels too.
        return [u for u in uses if selector(u.path, u.module)]
    raise TypeError(
        f"{function}: expected each {role} to be a path pattern (str), a module type, a module "
        f"object or a predicate (path, module) -> bool, received {type(selector).__name__} "
        f"{selector!r}. See docs/selectors.md."
    )


def compile_pattern(pattern: str, function: str = "frozen.select", role: str = "target") -> Callable[[str], bool]:
    """Return a function ``path -> bool`` for a dotted-path pattern (see ``docs/selectors.md``)."""
    if pattern == "":
        return lambda path: path == ""
    segments = pattern.split(".")
    matchers: list[Callable[[str], bool] | None] = []  # None stands for "**"
    for segment in segments:
        if segment == "":
            raise SelectorError(
                f"{function}: the {role} pattern {pattern!r} has an empty segment. Expected dotted "
                f"segments such as 'encoder.layer.0'; use '' alone for the model itself."
            )
        matchers.append(None if segment == "**" else _segment_matcher(segment, pattern, function, role))

    def match(path: str) -> bool:
        return _match_segments(matchers, path.split(".") if path else [])

    return match


def _segment_matcher(segment: str, pattern: str, function: str, role: str) -> Callable[[str], bool]:
    bounds = _RANGE.fullmatch(segment)
    if bounds:
        low, high = int(bounds.group(1)), int(bounds.group(2))
        if low > high:
            raise SelectorError(
                f"{function}: the {role} pattern {pattern!r} has the range {segment!r} whose start is "
                f"after its end. Ranges are inclusive and ascending: write '{high}-{low}'."
            )
        return lambda name: name.isdigit() and low <= int(name) <= high
    regex = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in segment))
    return lambda name: regex.fullmatch(name) is not None


def _match_segments(matchers: list, names: list[str]) -> bool:
    if not matchers:
        return not names
    head, rest = matchers[0], matchers[1:]
    if head is None:  # "**": try every number of segments, zero included
        return any(_match_segments(rest, names[i:]) for i in range(len(names) + 1))
    return bool(names) and head(names[0]) and _match_segments(rest, names[1:])


def _no_match_message(uses: list[ModuleUse], selector: Any, function: str, role: str) -> str:
    paths = [u.path for u in uses if u.path]
    if isinstance(selector, str):
        params = {join(u.path, n) for u in uses for n, p in u.module._parameters.items() if p is not None}
        if selector in params:
            owner = selector.rpartition(".")[0]
            return (
                f"{function}: the {role} {selector!r} is a parameter, but selectors name modules. "
                f"Select its module {owner!r} instead, or freeze the single tensor by hand "
                f"with requires_grad_(False)."
            )
        return (
            f"{function}: the {role} pattern {selector!r} matches no module path of the model. "
            f"Expected a dotted module path or pattern (docs/selectors.md); closest existing paths: "
            f"{closest(selector, _near(selector, paths))}. List every path with frozen.select(model, '**')."
        )
    if isinstance(selector, nn.Module):
        return (
            f"{function}: the {role} module object {type(selector).__name__} is not part of the model. "
            f"Expected a module reached from the model (e.g. model.encoder); pass that object or its path."
        )
    name = getattr(selector, "__name__", repr(selector))
    kinds = sorted({type(u.module).__name__ for u in uses})
    what = "module type" if isinstance(selector, (type, tuple)) else "predicate"
    return (
        f"{function}: the {role} {what} {name} matches no module of the model. Module types "
        f"present: {closest(name, kinds)}. Check the type (isinstance is used) or the predicate."
    )


def _near(pattern: str, paths: list[str]) -> list[str]:
    """Paths close to where ``pattern`` stops matching: the children of its longest matching prefix."""
    segments = pattern.split(".")
    for keep in range(len(segments) - 1, 0, -1):
        prefix = compile_pattern(".".join(segments[:keep]))
        parents = {p for p in paths if prefix(p)}
        children = [p for p in paths if p.rpartition(".")[0] in parents]
        if children:
            return children
    return paths
