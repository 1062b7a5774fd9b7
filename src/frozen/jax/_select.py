"""Selectors: what ``fj.select`` / ``fj.freeze`` / ``fj.thaw`` name (``docs/selectors.md``, ``docs/jax.md``).

A target is a dotted-path pattern (over module, container and array paths), a module
type or tuple of types, a module object, an array object, or a predicate
``(path, module) -> bool``. A target naming a module or container selects it and
everything below it; one naming an array selects that array alone. ``exclude=`` removes
what it names the same way. Every target must match something; in ``exclude=`` types and
predicates may match nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx

from .._grammar import Pattern, position
from ._errors import SelectorError, closest
from ._tree import Walk, walk
from ._wrapper import Frozen

__all__ = ["Selection", "require_targets", "resolve", "select"]

_PARTS = ("module", "container", "array")


@dataclass(eq=False)
class Selection:
    """What a call selects (entry indices).

    ``roots``: the entries the targets matched; ``covered``: for each entry, whether it is
    a root or below one, and not excluded; ``demoted``: covered modules that keep their
    behaviour because one of their own arrays is excluded; ``shown``: what ``select`` lists.
    """

    roots: list[int]
    covered: list[bool]
    demoted: set[int]
    shown: list[int]


def _spans(found: Walk) -> list[int]:
    spans = [0] * len(found.entries)
    for entry in found.entries[1:]:
        k = position(entry.name)
        if k is not None and k >= spans[entry.parent]:
            spans[entry.parent] = k + 1
    return spans


def _describe(target: Any) -> str:
    if isinstance(target, type):
        return f"type {target.__name__}"
    if isinstance(target, tuple):
        return "types (" + ", ".join(t.__name__ for t in target) + ")"
    return f"predicate {getattr(target, '__name__', repr(target))}"


def _hits(found: Walk, target: Any, function: str, role: str) -> list[bool]:
    entries = found.entries
    if isinstance(target, str):
        pattern = Pattern(target, function, role, error=SelectorError)
        spans = _spans(found)
        masks = [pattern.start]
        for entry in entries[1:]:
            masks.append(pattern.step(masks[entry.parent], entry.name, spans[entry.parent]))
        return [e.kind in _PARTS and pattern.accepts(m) for e, m in zip(entries, masks)]
    if isinstance(target, type) or (isinstance(target, tuple) and target and all(isinstance(t, type) for t in target)):
        return [e.kind in ("module", "container") and isinstance(e.value, target) for e in entries]
    if isinstance(target, eqx.Module):
        while isinstance(target, Frozen):
            target = target.module
        return [e.kind in ("module", "container") and e.value is target for e in entries]
    if eqx.is_array(target):
        return [e.kind == "array" and e.value is target for e in entries]
    if callable(target):
        return [e.kind in ("module", "container") and bool(target(e.path, e.value)) for e in entries]
    raise TypeError(
        f"{function}: expected each {role} to be a path pattern (str), a module type, a module or array "
        f"of the model, or a predicate (path, module) -> bool; received {type(target).__name__} {target!r}. "
        + (f"Unpack a list of targets: {function}(model, *targets)." if isinstance(target, list | tuple) else "")
    )


def _no_match(found: Walk, target: Any, function: str, role: str) -> SelectorError:
    paths = found.paths()
    if isinstance(target, str):
        return SelectorError(
            f"{function}: the {role} pattern {target!r} matches no module or array path of the model. Expected a "
            f"dotted path or pattern (docs/selectors.md); closest existing paths: {closest(target, paths)}. "
            f"List every path with fj.select(model, '**')."
        )
    if isinstance(target, eqx.Module) or hasattr(target, "shape"):
        return SelectorError(
            f"{function}: the {role} {type(target).__name__} object is not part of the model (Equinox models are "
            "values: an updated model holds new objects). Expected a module or array reached from the model; "
            "pass its path instead, e.g. 'head'. List every path with fj.select(model, '**')."
        )
    kinds = sorted({type(e.value).__name__ for e in found.entries if e.kind == "module"})
    return SelectorError(
        f"{function}: the {role} {_describe(target)} matches no module of the model. Expected a selector that "
        f"names at least one part; the model's module types are {', '.join(kinds)}. Pass a path pattern "
        "(docs/jax.md) or a type from that list."
    )


def _as_list(selectors: Any) -> list[Any]:
    if isinstance(selectors, list) or (
        isinstance(selectors, tuple) and not (selectors and all(isinstance(s, type) for s in selectors))
    ):
        return list(selectors)
    return [selectors]


def resolve(found: Walk, targets: Sequence[Any], exclude: Any, function: str) -> Selection:
    """Resolve ``targets`` minus ``exclude`` over the walked model; raise before anything changes."""
    entries = found.entries
    n = len(entries)
    roots: list[int] = []
    covered = [False] * n
    for target in targets:
        hits = _hits(found, target, function, "target")
        if not any(hits):
            raise _no_match(found, target, function, "target")
        for i in (i for i, hit in enumerate(hits) if hit):
            roots.append(i)
            for k in range(i, entries[i].end):
                covered[k] = entries[k].kind in _PARTS
    removed = [False] * n
    for item in _as_list(exclude):
        hits = _hits(found, item, function, "exclude")
        if not any(hits) and (isinstance(item, str | eqx.Module) or hasattr(item, "shape")):
            raise _no_match(found, item, function, "exclude")
        for i in (i for i, hit in enumerate(hits) if hit):
            for k in range(i, entries[i].end if entries[i].kind != "array" else i + 1):
                removed[k] = True
    covered = [c and not r for c, r in zip(covered, removed)]
    demoted = {entries[i].parent for i in range(1, n) if removed[i] and entries[i].kind == "array"}
    nodes = {i for i in range(n) if covered[i] and entries[i].kind != "array" and i not in demoted}
    arrays = {i for i in range(n) if covered[i] and entries[i].kind == "array" and entries[i].parent not in nodes}
    return Selection(roots, covered, demoted, sorted(nodes | arrays))


def select(model: Any, *targets: Any, exclude: Any = ()) -> list[str]:
    """Return the paths ``fj.freeze`` with the same arguments would freeze (a preview).

    Lists, in model order, every selected module or container path, and the path of each
    array selected on its own (one whose module is not selected).

    Raises:
        SelectorError: no target given, a malformed pattern, or a selector that matches nothing.
        TypeError: a selector of another kind (an ``int``, a ``list``: unpack it).

    Example:
        >>> import jax, equinox as eqx, frozen.jax as fj
        >>> mlp = eqx.nn.MLP(2, 2, 4, 3, key=jax.random.PRNGKey(0))
        >>> fj.select(mlp, "layers.-2:")
        ['layers.2', 'layers.3']
        >>> fj.select(mlp, "layers.0", exclude="layers.0.bias")
        ['layers.0.weight']
    """
    require_targets(targets, "fj.select")
    found = walk(model)
    chosen = resolve(found, targets, exclude, "fj.select")
    return [found.entries[i].path for i in chosen.shown]


def require_targets(targets: Sequence[Any], function: str) -> None:
    """Raise :class:`SelectorError` for an empty target list (``""`` is the whole model)."""
    if not targets:
        raise SelectorError(
            f"{function}: expected at least one target; received none. The whole model is spelled '': "
            f'{function}(model, ""). (An empty list of targets built by code must not silently mean everything.)'
        )
