"""One walk over a model: every node and leaf with its wrapper-transparent path and freeze scope.

Paths are dotted (``"blocks.3.weight"``): attribute names, sequence indices and dict keys,
with no segment for a :class:`Frozen` wrapper. The walk visits the tree in the order of
``jax.tree_util.tree_leaves``, so the k-th leaf entry is the k-th leaf ``jax`` sees
(``Walk.leaves``); a subtree is the range ``[i, entries[i].end)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.tree_util as jtu

if TYPE_CHECKING:  # the wrapper imports this walk; the walk knows a wrapper by its class flag
    from ._wrapper import Frozen

__all__ = ["Entry", "Walk", "check_alignment", "leaf_paths", "segment", "walk"]


@dataclass(eq=False)
class Entry:
    """A node or leaf of the model at one path (the value is unwrapped)."""

    path: str
    name: str
    value: Any
    kind: str  # "module" (eqx.Module), "container" (other pytree node), "array", "leaf" (other leaf)
    parent: int
    end: int = 0
    frozen: bool = False  # this use is inside a Frozen wrapper's scope (or listed by a partial one)
    everywhere: bool = False  # ... by a wrapper with tied="freeze": frozen at every use
    user: bool = False  # inside a wrapper the user built (not fj.freeze's)
    mark: tuple[str, str] | None = None  # (mode, tied) recorded by fj.freeze's wrappers
    mode: str | None = None  # "eval" or "inherit" for a frozen use (the outermost "eval" wins)
    state: bool = False  # inside an eqx.nn.StateIndex (initial state, never trained)
    wrappers: tuple[Frozen, ...] = ()  # the wrappers right around this node, outermost first


@dataclass(eq=False)
class Walk:
    """The entries of a model in ``tree_leaves`` order, and which entries are its leaves."""

    entries: list[Entry]
    leaves: list[int]  # entry index of each jax leaf, in jax order
    index: dict[str, int] = field(default_factory=dict)  # path -> entry index (nodes win over leaves)
    shared: list[int] = field(default_factory=list)  # entries that are eqx.nn.Shared

    def paths(self, kinds: tuple[str, ...] = ("module", "container", "array")) -> list[str]:
        """Every path of the given kinds, in model order."""
        return [e.path for e in self.entries if e.kind in kinds]


def segment(key: Any) -> str:
    """The path segment of one ``jax`` key (attribute name, index or dict key)."""
    for attribute in ("name", "idx", "key"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _children(value: Any) -> list[tuple[str, Any]] | None:
    """The (segment, child) pairs one level down, or None when ``value`` is a leaf."""
    flat, _ = jtu.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
    if len(flat) == 1 and flat[0][0] == () and flat[0][1] is value:
        return None
    return [(segment(keys[0]), child) for keys, child in flat if child is not None]


@dataclass
class _Scope:
    frozen: bool = False
    everywhere: bool = False
    user: bool = False
    mark: tuple[str, str] | None = None
    state: bool = False
    mode: str | None = None


def walk(model: Any) -> Walk:
    """Walk ``model`` once (see the module docstring)."""
    entries: list[Entry] = []
    leaves: list[int] = []
    shared: list[int] = []
    listed: dict[str, tuple[str, str]] = {}  # array path -> (tied, origin), from partial wrappers

    def visit(value: Any, path: str, name: str, parent: int, scope: _Scope) -> None:
        wrappers = []
        while getattr(type(value), "frozen_wrapper", False):
            wrappers.append(value)
            value = value.module
        for wrapper in wrappers:
            if wrapper.leaves is None:
                scope = _Scope(
                    True,
                    scope.everywhere or wrapper.tied == "freeze",
                    scope.user or wrapper.origin == "user",
                    scope.mark or ((wrapper.mode, wrapper.tied) if wrapper.origin == "freeze" else None),
                    scope.state,
                    "eval" if "eval" in (scope.mode, wrapper.mode) else "inherit",
                )
            else:
                for relative, tied in wrapper.leaves:
                    listed[f"{path}.{relative}" if path else relative] = (tied, wrapper.origin)
        own_mark = scope.mark
        for wrapper in wrappers:
            if wrapper.leaves is not None and wrapper.mark is not None and own_mark is None:
                own_mark = wrapper.mark
        if isinstance(value, eqx.nn.StateIndex):
            scope = _Scope(scope.frozen, scope.everywhere, scope.user, scope.mark, True, scope.mode)
        children = _children(value)
        if children is None:
            kind = "array" if eqx.is_array(value) else "leaf"
        else:
            kind = "module" if isinstance(value, eqx.Module) else "container"
        entry = Entry(path, name, value, kind, parent, 0, scope.frozen, scope.everywhere, scope.user, own_mark)
        entry.state, entry.wrappers, entry.mode = scope.state, tuple(wrappers), scope.mode
        if kind in ("array", "leaf") and path in listed:
            tied, origin = listed[path]
            entry.frozen = True
            entry.everywhere = entry.everywhere or tied == "freeze"
            if origin == "freeze" and entry.mark is None:
                entry.mark = ("eval", tied)
        me = len(entries)
        entries.append(entry)
        if children is None:
            leaves.append(me)
        else:
            if isinstance(value, eqx.nn.Shared):
                shared.append(me)
            for segment, child in children:
                visit(child, f"{path}.{segment}" if path else segment, segment, me, scope)
        entry.end = len(entries)

    visit(model, "", "", -1, _Scope())
    result = Walk(entries, leaves, shared=shared)
    for i in range(len(entries) - 1, -1, -1):  # reversed: a node wins over a leaf of the same path
        result.index[entries[i].path] = i
    return result


def leaf_paths(tree: Any) -> list[str]:
    """The path of each leaf of ``tree``, in ``jax.tree_util.tree_leaves`` order.

    Example:
        >>> import jax, equinox as eqx
        >>> leaf_paths(eqx.nn.Linear(2, 3, key=jax.random.PRNGKey(0)))
        ['weight', 'bias']
    """
    found = walk(tree)
    return [found.entries[i].path for i in found.leaves]


def check_alignment(model: Any, found: Walk) -> None:
    """Fail loudly if the walk and ``jax`` disagree on the leaves (a pytree type the walk misreads)."""
    count = len(jax.tree_util.tree_leaves(model))
    if count != len(found.leaves):
        raise AssertionError(f"frozen.jax: walked {len(found.leaves)} leaves, jax sees {count}; please report this.")
